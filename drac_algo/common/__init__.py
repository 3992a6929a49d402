"""Shared leaves: the error type, the lesion classes, the option values, atomic writes, the
command-line vocabulary, progress, provenance and hardware facts, the torchrun environment
(:mod:`.torchrun`), the one reader of outside JSON
and TOML files (:mod:`.datafiles`) and typed dataclasses to and from them (:mod:`.dataclass_io`).

Imports nothing else of drac_algo (a leaf layer); every other stage may import it. Heavy
packages (torch, OpenCV) are imported lazily here, so that every command's ``--help`` stays fast.
"""
