#include "cli/args.h"

#include <charconv>
#include <cstdio>
#include <iostream>

namespace shardstream::cli {

void PrintError(std::string_view message) {
  std::string line = "error: ";
  for (char c : message) line += (c == '\n' || c == '\r') ? ' ' : c;
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

std::optional<Args> Args::Parse(std::span<char* const> argv, std::span<const FlagSpec> flags) {
  Args args;
  bool only_positional = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string_view word = argv[i];
    if (only_positional || word.size() < 2 || word[0] != '-') {
      args.positional_.emplace_back(word);
      continue;
    }
    if (word == "--") {
      only_positional = true;
      continue;
    }
    if (word == "-h" || word == "--help") {
      args.help_ = true;
      continue;
    }
    if (!word.starts_with("--")) {
      PrintError("unknown option '" + std::string(word) + "' (see --help)");
      return std::nullopt;
    }
    std::string_view name = word.substr(2);
    std::optional<std::string_view> inline_value;
    if (size_t eq = name.find('='); eq != std::string_view::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& f : flags) {
      if (f.name == name) spec = &f;
    }
    if (spec == nullptr) {
      PrintError("unknown option '--" + std::string(name) + "' (see --help)");
      return std::nullopt;
    }
    std::string value;
    if (spec->value_name.empty()) {
      if (inline_value) {
        PrintError("option '--" + std::string(name) + "' takes no value");
        return std::nullopt;
      }
    } else if (inline_value) {
      value = *inline_value;
    } else if (i + 1 < argv.size()) {
      value = argv[++i];
    } else {
      PrintError("option '--" + std::string(name) + "' needs a value (" +
                 std::string(spec->value_name) + ")");
      return std::nullopt;
    }
    args.values_[std::string(name)] = std::move(value);
  }
  return args;
}

std::optional<std::string> Args::Get(std::string_view flag) const {
  auto it = values_.find(std::string(flag));
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::optional<uint64_t> Args::GetUint(std::string_view flag, uint64_t fallback) const {
  std::optional<std::string> text = Get(flag);
  if (!text) return fallback;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (ec != std::errc() || end != text->data() + text->size()) {
    PrintError("option '--" + std::string(flag) + "' needs a non-negative integer, got '" + *text +
               "'");
    return std::nullopt;
  }
  return value;
}

void PrintHelp(std::string_view usage, std::string_view description,
               std::span<const FlagSpec> flags) {
  std::cout << "usage: shardstream " << usage << "\n\n" << description << "\n";
  if (!flags.empty()) std::cout << "\noptions:\n";
  for (const FlagSpec& f : flags) {
    std::string left = "  --" + std::string(f.name);
    if (!f.value_name.empty()) left += " " + std::string(f.value_name);
    if (left.size() < 24)
      left.resize(24, ' ');
    else
      left += "  ";
    std::cout << left << f.help << "\n";
  }
  std::cout << "  --help                print this help\n";
}

}  // namespace shardstream::cli
