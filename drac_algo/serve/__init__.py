"""A run of ``process.py``: the command (:mod:`.cli`), the run (:mod:`.pipeline`), the two modes
(:mod:`.modes`: the protocol and a Grand Challenge job; :mod:`.batch`: a batch folder), what a
run accumulates (:mod:`.run_state`), ``--continue`` (:mod:`.batch`, :mod:`.resume`), the output
files (:mod:`.outputs`, :mod:`.overlay`, :mod:`.results`), the report page (:mod:`.report_page`,
:mod:`.report`: ``report.html``), the platform's I/O (:mod:`.gc_io`, :mod:`.job_settings`) and
the machine's self-check (:mod:`.doctor`).

May import: :mod:`drac_algo.engine` and everything below it. Never training code or the tools.
"""
