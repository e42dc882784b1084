# `cmake --install BUILD --prefix P` installs what a LibTorch program needs to use shardstream:
#   P/lib/libshardstream.so            shardstream::shardstream (integration/CMakeLists.txt)
#   P/lib/libshardstream_torch_cuda.so the CUDA plugin, found next to libshardstream.so at run time
#   P/include/shardstream/*.h          the public headers (torch and the standard library only)
#   P/lib/cmake/shardstream/           shardstreamConfig.cmake, its version file and the targets
#   P/bin/shardstream                  the command
# A consumer: find_package(Torch) then find_package(shardstream CONFIG REQUIRED) and
# target_link_libraries(app shardstream::shardstream) (examples/libtorch_app).
include(CMakePackageConfigHelpers)

if(TARGET shardstream_torch_cuda)
  set(SHARDSTREAM_HAVE_TORCH_CUDA_BOOL TRUE)
else()
  set(SHARDSTREAM_HAVE_TORCH_CUDA_BOOL FALSE)
endif()

set(SHARDSTREAM_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/shardstream)

install(TARGETS shardstream_library EXPORT shardstreamTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
if(TARGET shardstream_torch_cuda)
  install(TARGETS shardstream_torch_cuda LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
if(TARGET shardstream)
  set_target_properties(shardstream PROPERTIES INSTALL_RPATH_USE_LINK_PATH TRUE)
  install(TARGETS shardstream RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/shardstream
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")

install(EXPORT shardstreamTargets
  NAMESPACE shardstream::
  FILE shardstreamTargets.cmake
  DESTINATION ${SHARDSTREAM_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/shardstreamConfig.cmake.in
  ${PROJECT_BINARY_DIR}/shardstreamConfig.cmake
  INSTALL_DESTINATION ${SHARDSTREAM_CMAKE_DIR})
# 0.x: a consumer asking for 0.1 takes any 0.1.z, not 0.2 (SameMinorVersion).
write_basic_package_version_file(${PROJECT_BINARY_DIR}/shardstreamConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/shardstreamConfig.cmake
  ${PROJECT_BINARY_DIR}/shardstreamConfigVersion.cmake
  DESTINATION ${SHARDSTREAM_CMAKE_DIR})
