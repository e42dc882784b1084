// `shardstream load` — being written.
#include "cli/args.h"
#include "cli/commands.h"

namespace shardstream::cli {
int RunLoad(std::span<char* const>) {
  PrintError("load is not built yet");
  return kExitFailure;
}
}  // namespace shardstream::cli
