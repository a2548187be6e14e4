# Stand-in for Slicer's extension config and CPack files: nothing to check there.
