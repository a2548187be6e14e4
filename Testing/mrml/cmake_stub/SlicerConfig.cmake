# Stand-in for the SlicerConfig.cmake of a Slicer build tree, for a configure-only check of the
# extension's CMake files (Testing/mrml/test_extension.py). It sets the variables the extension reads
# and includes UseSlicer.cmake, which defines exactly the macros an extension may call, with their
# keyword arguments; anything else stops CMake with an error, as it would against real Slicer.
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.10/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
