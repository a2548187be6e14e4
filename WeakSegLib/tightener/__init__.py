"""The box tightener (Redekop & Chernyavskiy 2021; docs/methods.md §2): a patch classifier trained on a
few fully labelled volumes (:mod:`.training`) corrects the per-slice boxes cut from a 3D box
(:mod:`.tighten`); :mod:`.patches` is the patch geometry, :mod:`.model` the trained classifier."""
