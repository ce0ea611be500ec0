"""Experiments: data sets (``sources``, ``data``), the study's models (``models``), the
training loop (``train``), defaults and profiles, named runs and their shared harness
(``runs``, ``harness``), the run store (``store``), Dask sweeps (``sweep``), the notebooks'
studies (``studies``), provenance, and the baselines."""
