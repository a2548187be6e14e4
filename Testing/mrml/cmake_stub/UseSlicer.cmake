# The macros of Slicer and CTK that WeakSeg's CMake files may call, with the keyword arguments their
# sources declare (Slicer 5.10: CMake/SlicerMacroBuildScriptedModule.cmake,
# CMake/SlicerMacroPythonTesting.cmake; CTK: CMake/ctkMacroCompilePythonScript.cmake). A keyword they
# do not take, a missing mandatory argument or a file that does not exist stops CMake; each call is
# logged to ${CMAKE_BINARY_DIR}/slicer-calls.txt for the test to inspect.

function(_stub_check name options one_value multi_value mandatory)
  cmake_parse_arguments(ARG "${options}" "${one_value}" "${multi_value}" ${ARGN})
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "${name}: unknown argument(s) ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  foreach(key IN LISTS mandatory)
    if(NOT DEFINED ARG_${key})
      message(FATAL_ERROR "${name}: ${key} is mandatory")
    endif()
  endforeach()
  file(APPEND "${CMAKE_BINARY_DIR}/slicer-calls.txt" "${name}|${CMAKE_CURRENT_SOURCE_DIR}|${ARGN}\n")
endfunction()

function(_stub_files_exist name base)
  foreach(file IN LISTS ARGN)
    if(NOT IS_ABSOLUTE "${file}")
      set(file "${base}/${file}")
    endif()
    if(NOT EXISTS "${file}" AND NOT EXISTS "${file}.py")
      message(FATAL_ERROR "${name}: ${file} does not exist")
    endif()
  endforeach()
endfunction()

macro(ctkMacroCompilePythonScript)
  _stub_check(ctkMacroCompilePythonScript "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES"
    "TARGET_NAME;SCRIPTS;DESTINATION_DIR;INSTALL_DIR" ${ARGN})
  cmake_parse_arguments(_CTK "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT _CTK_SOURCE_DIR)
    set(_CTK_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  _stub_files_exist(ctkMacroCompilePythonScript "${_CTK_SOURCE_DIR}" ${_CTK_SCRIPTS} ${_CTK_RESOURCES})
endmacro()

macro(slicerMacroBuildScriptedModule)
  _stub_check(slicerMacroBuildScriptedModule "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES"
    "NAME;SCRIPTS" ${ARGN})
  cmake_parse_arguments(_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  _stub_files_exist(slicerMacroBuildScriptedModule "${CMAKE_CURRENT_SOURCE_DIR}" ${_SLICER_SCRIPTS}
    ${_SLICER_RESOURCES})
endmacro()

macro(slicer_add_python_unittest)
  _stub_check(slicer_add_python_unittest "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" "SCRIPT" ${ARGN})
endmacro()
