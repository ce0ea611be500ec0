"""Reporting: matched-size comparisons and intervals (``compare``), the papers' claims and
the project's targets (``claims``), figures (``plots``) and the metrics files and HTML page
of a profile (``report``).  Renders what the experiments measured; trains nothing."""
