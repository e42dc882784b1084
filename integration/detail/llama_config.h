// The Status-returning config parsers under the public, throwing ParseLlamaConfig and
// ReadLlamaConfig (shardstream/llama_config.h), for the CLI and tests, which report errors
// without exceptions.
#pragma once

#include "io/status.h"

#include <filesystem>
#include <string_view>

#include "shardstream/llama_config.h"

namespace shardstream::detail {

// As shardstream::ParseLlamaConfig / ReadLlamaConfig, with the error as a Status (rule "config").
io::Result<LlamaConfig> ParseLlamaConfig(std::string_view json);
io::Result<LlamaConfig> ReadLlamaConfig(const std::filesystem::path& path);

}  // namespace shardstream::detail
