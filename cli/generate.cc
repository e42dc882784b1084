// `shardstream generate` — being written.
#include "cli/args.h"
#include "cli/commands.h"

namespace shardstream::cli {
int RunGenerate(std::span<char* const>) {
  PrintError("generate is not built yet");
  return kExitFailure;
}
}  // namespace shardstream::cli
