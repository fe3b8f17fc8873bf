"""The report: ``report.json`` (the contract), ``report.md``, ``report.html`` and ``plots/*.png``."""
