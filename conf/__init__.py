"""Hydra reads conf/ as the package initbench.conf (initbench/conf links here), so that an installed
initbench carries its configs: Hydra looks for this file to accept a config package."""
