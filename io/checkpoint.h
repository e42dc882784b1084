// Checkpoint discovery: from a path the user gives to a validated set of safetensors files.
//
// A path may be:
//   - a safetensors file;
//   - a JSON shard index (HF `save_pretrained` layout: {"weight_map": {tensor: shard file}});
//   - a folder holding `model.safetensors` (taken alone, as transformers does), else
//     `model.safetensors.index.json` or exactly one other `*.safetensors.index.json`, else every
//     `*.safetensors` file in it (shards whose tensor names must be disjoint).
// Every file's header is validated (see safetensors_header.h) before anything else happens, and the
// index is cross-checked against the shards. Rules, as carried by errors:
//   not-found              the path does not exist
//   no-checkpoint          a folder with no safetensors file and no index
//   ambiguous-index        a folder with several *.safetensors.index.json and no model.safetensors
//   index-too-large        the index file is larger than kMaxIndexBytes
//   index-json             the index is not valid JSON, or not an object
//   index-weight-map       no "weight_map", or it is not an object of string → string
//   index-shard-path       a shard name that is empty, absolute, or leaves the index's folder (..)
//   index-shard-missing    a shard named by the index does not exist
//   index-tensor-missing   the index maps a tensor to a shard that does not hold it
//   index-tensor-unmapped  a shard holds a tensor that the index does not list
//   duplicate-tensor       the same tensor name in two files
//   symlink-loop           the path, or a file in the folder, is a symlink loop
//   permission-denied      the path, or a file in the folder, cannot be read
#pragma once

#include "io/safetensors_header.h"
#include "io/status.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shardstream::io {

enum class CheckpointLayout : uint8_t {
  kSingleFile,   // one .safetensors file
  kShardFolder,  // a folder of .safetensors files without an index
  kIndexed,      // a shard index (json) and the shards it names
};

std::string_view CheckpointLayoutName(CheckpointLayout layout);

struct CheckpointFile {
  std::filesystem::path path;
  Header header;
};

// A tensor's place in a Checkpoint: files[file].header.tensors[index].
struct TensorLocation {
  uint32_t file = 0;
  uint32_t index = 0;
};

// A validated checkpoint: its files (shards sorted by path) and their headers. Immutable after
// OpenCheckpoint; safe to read from several threads.
class Checkpoint {
 public:
  std::filesystem::path source;  // the path the user gave
  CheckpointLayout layout = CheckpointLayout::kSingleFile;
  std::optional<std::filesystem::path> index_path;
  std::vector<CheckpointFile> files;

  size_t tensor_count() const;
  uint64_t data_bytes() const;  // tensor bytes across all files
  uint64_t file_bytes() const;  // whole files, headers included

  // Where the tensor called `name` lives, or nullopt. O(files × log tensors).
  std::optional<TensorLocation> Find(std::string_view name) const;
  const TensorInfo& tensor(TensorLocation location) const {
    return files[location.file].header.tensors[location.index];
  }
};

// Shard indexes of real checkpoints are kilobytes (a 100k-tensor index is ~10 MB); anything far
// larger is refused before it is read into memory.
inline constexpr uint64_t kMaxIndexBytes = 256ull << 20;

// A shard index's "weight_map": tensor name → shard file name (relative to the index's folder),
// sorted by tensor name; a repeated tensor name keeps its last shard, as Python's json does.
using WeightMap = std::map<std::string, std::string, std::less<>>;

// Parses the JSON text of a shard index (any bytes: this is what the index fuzzer drives). Errors:
// rules index-json, index-weight-map and index-shard-path, naming `index_path`. Does not touch the
// filesystem. Thread-safe.
Result<WeightMap> ParseShardIndex(std::string_view json, const std::filesystem::path& index_path);

// Finds, reads and validates the checkpoint at `path`. Errors name the file (and tensor) at fault
// and carry one of the rules above or a header rule. Reads headers only. Thread-safe.
Result<Checkpoint> OpenCheckpoint(const std::filesystem::path& path);

}  // namespace shardstream::io
