// Command-line parsing for the shardstream subcommands: GNU-style `--flag`, `--flag value` and
// `--flag=value`, positional arguments, and `--help`. Unknown flags are usage errors.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shardstream::cli {

// Exit statuses shared by every command.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the checkpoint or the load failed
inline constexpr int kExitUsage = 2;    // bad command line

struct FlagSpec {
  std::string_view name;        // without the leading dashes
  std::string_view value_name;  // empty for a boolean flag
  std::string_view help;
};

class Args {
 public:
  // Parses `argv` (the words after the subcommand). On a usage error returns nullopt after
  // printing `error: ...` to stderr.
  static std::optional<Args> Parse(std::span<char* const> argv, std::span<const FlagSpec> flags);

  bool Has(std::string_view flag) const { return values_.count(std::string(flag)) > 0; }
  std::optional<std::string> Get(std::string_view flag) const;
  // The flag's value as an unsigned integer; prints an error and returns nullopt when malformed.
  std::optional<uint64_t> GetUint(std::string_view flag, uint64_t fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }
  bool help() const { return help_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
  bool help_ = false;
};

// Prints "usage: shardstream USAGE", the description and one line per flag.
void PrintHelp(std::string_view usage, std::string_view description,
               std::span<const FlagSpec> flags);

// Prints "error: MESSAGE" on stderr as one line (newlines in MESSAGE become spaces).
void PrintError(std::string_view message);

}  // namespace shardstream::cli
