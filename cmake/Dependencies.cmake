# Finds shardstream's dependencies. Required ones fail the configure step with a message that
# says how to install them (scripts/install-deps does it all on Debian 12); AUTO ones are probed
# and reported in the summary line.

find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)

# Fails configure when an ON option cannot be honoured; says what to install.
function(shardstream_require option found what)
  if(${option} STREQUAL "ON" AND NOT ${found})
    message(FATAL_ERROR "${option}=ON but ${what} was not found. "
                        "Run scripts/install-deps, or set ${option}=OFF.")
  endif()
endfunction()

# simdjson parses safetensors headers (a 20k-tensor header in about a millisecond).
find_package(simdjson CONFIG QUIET)
if(NOT TARGET simdjson::simdjson)
  pkg_check_modules(SIMDJSON REQUIRED IMPORTED_TARGET simdjson)
  add_library(simdjson::simdjson ALIAS PkgConfig::SIMDJSON)
endif()

# oneTBB runs the copy tasks.
find_package(TBB REQUIRED)

# liburing: the streaming read backend.
set(SHARDSTREAM_HAVE_IO_URING OFF)
if(NOT SHARDSTREAM_WITH_IO_URING STREQUAL "OFF")
  pkg_check_modules(LIBURING IMPORTED_TARGET liburing)
  if(LIBURING_FOUND)
    set(SHARDSTREAM_HAVE_IO_URING ON)
  endif()
  shardstream_require(SHARDSTREAM_WITH_IO_URING SHARDSTREAM_HAVE_IO_URING "liburing (liburing-dev)")
endif()

# CUDA: the runtime library, and nvcc for the one kernel of our own (the device cast,
# cuda/cast_kernel.cu). With the runtime but no compiler, GPU loads work and casts on the device
# fail with rule "cast" saying why.
set(SHARDSTREAM_HAVE_CUDA OFF)
set(SHARDSTREAM_HAVE_CUDA_KERNELS OFF)
if(NOT SHARDSTREAM_WITH_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(SHARDSTREAM_HAVE_CUDA ON)
  endif()
  shardstream_require(SHARDSTREAM_WITH_CUDA SHARDSTREAM_HAVE_CUDA "the CUDA toolkit (cudart)")
endif()

# LibTorch: from the PyPI torch wheel (torch.utils.cmake_prefix_path) or a user's own LibTorch via
# CMAKE_PREFIX_PATH. Only integration/ links it.
set(SHARDSTREAM_HAVE_TORCH OFF)
if(NOT SHARDSTREAM_WITH_TORCH STREQUAL "OFF")
  # A CUDA-enabled LibTorch otherwise probes the machine's GPUs (with a try_run that fails where
  # there is no GPU) to pick nvcc arch flags. shardstream compiles no kernels against torch, so the
  # value only has to be valid: Ampere and Hopper.
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
  endif()
  find_package(Torch QUIET)
  if(Torch_FOUND OR TORCH_FOUND)
    if(Torch_VERSION VERSION_LESS 2.0)
      message(FATAL_ERROR "LibTorch ${Torch_VERSION} is too old: shardstream needs LibTorch 2.x "
                          "(scripts/install-deps installs the pinned torch wheel).")
    endif()
    set(SHARDSTREAM_HAVE_TORCH ON)
  endif()
  shardstream_require(SHARDSTREAM_WITH_TORCH SHARDSTREAM_HAVE_TORCH
                      "LibTorch 2.x (pass -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)'))")
endif()

# nvcc for the device cast kernel, enabled after LibTorch's CMake (which configures CUDA flags of
# its own and warns about a CMAKE_CUDA_ARCHITECTURES it does not use).
if(SHARDSTREAM_HAVE_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Ampere and Hopper machine code, and Hopper PTX that newer GPUs compile at load time.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
    endif()
    if(SHARDSTREAM_CCACHE AND NOT CMAKE_CUDA_COMPILER_LAUNCHER)
      set(CMAKE_CUDA_COMPILER_LAUNCHER ${SHARDSTREAM_CCACHE})
    endif()
    enable_language(CUDA)
    # C++20 for the headers the kernel shares with the host code: nvcc 12+ has it, but CMake
    # before 3.26 does not know its flag.
    if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(SHARDSTREAM_HAVE_CUDA_KERNELS ON)
  endif()
endif()

# OpenSSL's libcrypto: the SHA-256 of `shardstream load --digest` (cli/digest.h). Required where
# the command is built, that is with LibTorch; the Python package's build does not look for it.
# OPENSSL_ROOT_DIR points at another copy (scripts/gpu-check: the one scripts/fetch-gpu-deps
# unpacked).
if(SHARDSTREAM_HAVE_TORCH)
  find_package(OpenSSL COMPONENTS Crypto)
  if(NOT TARGET OpenSSL::Crypto)
    message(FATAL_ERROR "OpenSSL's libcrypto was not found: the shardstream command needs it for "
                        "SHA-256. Run scripts/install-deps (Debian: libssl-dev), or set "
                        "OPENSSL_ROOT_DIR, or SHARDSTREAM_WITH_TORCH=OFF to build without the "
                        "command.")
  endif()
endif()

if(SHARDSTREAM_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(SHARDSTREAM_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
