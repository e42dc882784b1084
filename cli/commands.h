// The shardstream subcommands. Each takes the words after its name and returns the process exit
// status (cli/args.h: 0 ok, 1 failure, 2 usage). Errors go to stderr as one `error:` line.
#pragma once

#include <span>

namespace shardstream::cli {

int RunInspect(std::span<char* const> argv);
int RunLoad(std::span<char* const> argv);
int RunGenerate(std::span<char* const> argv);
int RunBench(std::span<char* const> argv);

}  // namespace shardstream::cli
