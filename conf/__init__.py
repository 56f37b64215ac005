"""hamdam's Hydra configs, shipped in the package as ``hamdam.conf`` (Hydra's ``pkg://hamdam.conf``)."""
