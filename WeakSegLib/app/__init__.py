"""Applications of the core: the ``weakseg`` command line, the background worker and its jobs, the demo,
terminal progress, and the dependency check of the Slicer modules."""
