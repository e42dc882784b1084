// shardstream: load safetensors checkpoints fast. This file only dispatches to subcommands.

#include "cli/args.h"
#include "cli/commands.h"

#include <array>
#include <cstdio>
#include <exception>
#include <iostream>
#include <span>
#include <string_view>

namespace {

struct Command {
  std::string_view name;
  std::string_view summary;
  int (*run)(std::span<char* const>);
};

constexpr std::array<Command, 4> kCommands = {{
    {"load", "load a checkpoint into tensors and report the time taken (or digests)",
     shardstream::cli::RunLoad},
    {"inspect", "validate a checkpoint and describe its files, tensors and dtypes",
     shardstream::cli::RunInspect},
    {"generate", "write a synthetic Llama-shaped checkpoint (sharded, with index and config)",
     shardstream::cli::RunGenerate},
    {"bench", "time IO strategies against the machine's ceilings and the peer loaders",
     shardstream::cli::RunBench},
}};

void PrintUsage() {
  std::cout << "usage: shardstream COMMAND [ARGS...]\n\n"
               "Loads safetensors checkpoints into LibTorch tensors as fast as the storage and\n"
               "the PCIe link allow.\n\ncommands:\n";
  for (const Command& c : kCommands) {
    std::printf("  %-12s %.*s\n", std::string(c.name).c_str(), static_cast<int>(c.summary.size()),
                c.summary.data());
  }
  std::cout << "\nRun 'shardstream COMMAND --help' for a command's options.\n";
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  using shardstream::cli::kExitUsage;
  if (argc < 2) {
    PrintUsage();
    return kExitUsage;
  }
  std::string_view name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage();
    return 0;
  }
  for (const Command& c : kCommands) {
    if (c.name != name) continue;
    try {
      return c.run(std::span<char* const>(argv + 2, static_cast<size_t>(argc - 2)));
    } catch (const std::exception& e) {
      // The last line of defence: commands report errors themselves, but a bad_alloc on a
      // hostile header must still end as one error line, not an abort.
      // Only the first line: torch appends a backtrace to its messages.
      std::string_view what = e.what();
      shardstream::cli::PrintError(what.substr(0, what.find('\n')));
      return shardstream::cli::kExitFailure;
    }
  }
  shardstream::cli::PrintError("unknown command '" + std::string(name) + "' (see --help)");
  return kExitUsage;
}
