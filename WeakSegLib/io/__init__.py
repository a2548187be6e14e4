"""Files in and out: volumes (SimpleITK), boxes, size labels, partial labels, label conventions, model
cards, atomic writes, and the sample data shipped in PyPI packages. No torch."""
