"""Hydra's configs of backprop-lab, installed with the package as ``backprop_lab.configs`` (YAML files only)."""
