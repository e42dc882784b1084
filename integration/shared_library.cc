// libshardstream.so (integration/CMakeLists.txt) is linked from the static targets, whole-archive
// for shardstream_torch; CMake wants a source of its own for a shared library, and this is it.
namespace shardstream::detail {
// Names the library in `nm -D` and in a debugger.
extern const char kSharedLibrary[] = "libshardstream";
}  // namespace shardstream::detail
