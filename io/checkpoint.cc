#include "io/checkpoint.h"

#include "io/file.h"

#include <simdjson.h>

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <dirent.h>
#include <map>
#include <memory>
#include <unordered_map>

namespace shardstream::io {
namespace {

namespace fs = std::filesystem;
namespace dom = simdjson::dom;

constexpr std::string_view kSafetensorsSuffix = ".safetensors";
constexpr std::string_view kIndexSuffix = ".safetensors.index.json";
constexpr std::string_view kDefaultWeightsName = "model.safetensors";
constexpr std::string_view kDefaultIndexName = "model.safetensors.index.json";

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

Status FormatError(std::string rule, std::string message, const fs::path& path) {
  return Status::Error(StatusCode::kInvalidFormat, std::move(rule), std::move(message))
      .WithPath(path.string());
}

// stat() on a path (following symlinks), errors as Status: ENOENT → not-found, EACCES →
// permission-denied, ELOOP → symlink-loop. Plain POSIX rather than std::filesystem::status: the
// PyPI torch wheel's libtorch.so exports its own copies of std::filesystem functions, which
// interpose on libstdc++'s in any process that links it.
Result<struct stat> StatPath(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return Status::Error(StatusCode::kNotFound, "not-found", "no such file or directory")
          .WithPath(path.string());
    }
    return Status::FromErrno(errno, "stat").WithPath(path.string());
  }
  return st;
}

Result<CheckpointFile> ReadFile(const fs::path& path) {
  SHARDSTREAM_ASSIGN_OR_RETURN(Header header, ReadHeader(path));
  return CheckpointFile{path, std::move(header)};
}

// The regular files (symlinks followed; dangling ones skipped) a folder holds whose names end in
// `suffix`, hidden ones excepted, sorted. An entry that cannot be examined for another reason (a
// symlink loop, a folder on its path without search permission) is an error naming it: skipping
// it would load a checkpoint with a shard silently missing, or report "no-checkpoint".
Result<std::vector<fs::path>> ListWithSuffix(const fs::path& folder, std::string_view suffix) {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(folder.c_str()), ::closedir);
  if (!dir) return Status::FromErrno(errno, "opendir").WithPath(folder.string());
  std::vector<fs::path> out;
  errno = 0;
  while (const dirent* entry = ::readdir(dir.get())) {
    const std::string_view name = entry->d_name;
    if (!EndsWith(name, suffix) || name.starts_with(".")) continue;
    fs::path candidate = folder / std::string(name);
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0) {
      if (S_ISREG(st.st_mode)) out.push_back(candidate);
    } else if (errno != ENOENT) {
      return Status::FromErrno(errno, "stat").WithPath(candidate.string());
    }
    errno = 0;
  }
  if (errno != 0) return Status::FromErrno(errno, "readdir").WithPath(folder.string());
  std::sort(out.begin(), out.end());
  return out;
}

Status CheckDisjoint(const Checkpoint& checkpoint) {
  std::unordered_map<std::string_view, uint32_t> owner;
  for (uint32_t f = 0; f < checkpoint.files.size(); ++f) {
    for (const TensorInfo& t : checkpoint.files[f].header.tensors) {
      auto [it, inserted] = owner.emplace(t.name, f);
      if (!inserted) {
        return FormatError("duplicate-tensor",
                           "also stored in " + checkpoint.files[it->second].path.string() +
                               "; a tensor may live in one file only",
                           checkpoint.files[f].path)
            .WithTensor(t.name);
      }
    }
  }
  return Status::Ok();
}

Result<Checkpoint> OpenShardFolder(const fs::path& folder, std::vector<fs::path> shards) {
  Checkpoint checkpoint;
  checkpoint.source = folder;
  checkpoint.layout =
      shards.size() == 1 ? CheckpointLayout::kSingleFile : CheckpointLayout::kShardFolder;
  for (const fs::path& shard : shards) {
    SHARDSTREAM_ASSIGN_OR_RETURN(CheckpointFile file, ReadFile(shard));
    checkpoint.files.push_back(std::move(file));
  }
  SHARDSTREAM_RETURN_IF_ERROR(CheckDisjoint(checkpoint));
  return checkpoint;
}

// Rejects shard names that could reach outside the index's folder.
Status CheckShardName(std::string_view name, const fs::path& index_path) {
  fs::path relative(name);
  std::string why;
  if (name.empty()) {
    why = "is empty";
  } else if (relative.is_absolute()) {
    why = "is an absolute path";
  } else {
    for (const fs::path& part : relative) {
      if (part == "..") why = "leaves the index's folder (..)";
    }
  }
  if (why.empty()) return Status::Ok();
  return FormatError("index-shard-path",
                     "shard name '" + std::string(name) + "' " + why +
                         "; shards must be named relative to the index's folder",
                     index_path);
}

}  // namespace

Result<WeightMap> ParseShardIndex(std::string_view json, const fs::path& index_path) {
  simdjson::padded_string padded(json);
  dom::parser parser;
  dom::element root;
  if (auto code = parser.parse(padded).get(root); code) {
    return FormatError(
        "index-json",
        std::string("index is not valid JSON (") + simdjson::error_message(code) + ")", index_path);
  }
  if (root.type() != dom::element_type::OBJECT) {
    return FormatError("index-json", "index must be a JSON object", index_path);
  }
  dom::element weight_map;
  if (root["weight_map"].get(weight_map) != simdjson::SUCCESS) {
    return FormatError("index-weight-map", "index has no \"weight_map\"", index_path);
  }
  if (weight_map.type() != dom::element_type::OBJECT) {
    return FormatError("index-weight-map", "\"weight_map\" must be an object", index_path);
  }

  // tensor → shard name; a repeated key keeps the last value, as Python's json module does.
  WeightMap mapping;
  dom::object weight_map_object = weight_map.get_object().value_unsafe();
  for (dom::key_value_pair entry : weight_map_object) {
    if (entry.value.type() != dom::element_type::STRING) {
      return FormatError("index-weight-map",
                         "\"weight_map\" must map each tensor name to a shard file name",
                         index_path)
          .WithTensor(entry.key);
    }
    std::string_view shard = entry.value.get_string().value_unsafe();
    SHARDSTREAM_RETURN_IF_ERROR(CheckShardName(shard, index_path).WithTensor(entry.key));
    mapping.insert_or_assign(std::string(entry.key), std::string(shard));
  }
  return mapping;
}

namespace {

Result<Checkpoint> OpenIndexed(const fs::path& index_path) {
  SHARDSTREAM_ASSIGN_OR_RETURN(OpenFile index_file, OpenForRead(index_path));
  if (index_file.size_bytes > kMaxIndexBytes) {
    return FormatError("index-too-large",
                       "index is " + std::to_string(index_file.size_bytes) +
                           " bytes, over the limit of " + std::to_string(kMaxIndexBytes),
                       index_path);
  }
  std::string json(index_file.size_bytes, '\0');
  SHARDSTREAM_RETURN_IF_ERROR(
      PreadFull(index_file.fd.get(), std::as_writable_bytes(std::span(json)), 0)
          .WithPath(index_path.string()));
  SHARDSTREAM_ASSIGN_OR_RETURN(WeightMap mapping, ParseShardIndex(json, index_path));

  std::vector<std::string> shard_names;
  for (const auto& [tensor, shard] : mapping) shard_names.push_back(shard);
  std::sort(shard_names.begin(), shard_names.end());
  shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());

  Checkpoint checkpoint;
  checkpoint.source = index_path;
  checkpoint.layout = CheckpointLayout::kIndexed;
  checkpoint.index_path = index_path;
  const fs::path folder = index_path.parent_path();
  std::unordered_map<std::string_view, uint32_t> shard_file;
  for (const std::string& name : shard_names) {
    fs::path shard_path = folder / name;
    auto st = StatPath(shard_path);
    if (!st.ok()) {
      if (st.status().code() != StatusCode::kNotFound) return std::move(st).status();
      return FormatError(
          "index-shard-missing",
          "shard '" + name + "' named by the index does not exist (" + shard_path.string() + ")",
          index_path);
    }
    SHARDSTREAM_ASSIGN_OR_RETURN(CheckpointFile file, ReadFile(shard_path));
    shard_file.emplace(name, static_cast<uint32_t>(checkpoint.files.size()));
    checkpoint.files.push_back(std::move(file));
  }
  SHARDSTREAM_RETURN_IF_ERROR(CheckDisjoint(checkpoint));

  for (const auto& [tensor, shard] : mapping) {
    const CheckpointFile& file = checkpoint.files[shard_file.at(shard)];
    if (file.header.Find(tensor) == nullptr) {
      return FormatError("index-tensor-missing",
                         "the index maps it to shard '" + shard + "', which does not hold it",
                         index_path)
          .WithTensor(tensor);
    }
  }
  for (const CheckpointFile& file : checkpoint.files) {
    for (const TensorInfo& t : file.header.tensors) {
      if (mapping.find(t.name) == mapping.end()) {
        return FormatError("index-tensor-unmapped",
                           "stored in this shard but missing from the index's weight_map (" +
                               index_path.string() + ")",
                           file.path)
            .WithTensor(t.name);
      }
    }
  }
  return checkpoint;
}

Result<Checkpoint> OpenFolder(const fs::path& folder) {
  // A default name that exists but cannot be examined (symlink loop, no permission) is an error,
  // not a reason to look for something else to load.
  const fs::path single = folder / kDefaultWeightsName;
  auto single_st = StatPath(single);
  if (single_st.ok() && S_ISREG(single_st->st_mode)) return OpenShardFolder(folder, {single});
  if (!single_st.ok() && single_st.status().code() != StatusCode::kNotFound) {
    return std::move(single_st).status();
  }
  const fs::path default_index = folder / kDefaultIndexName;
  auto index_st = StatPath(default_index);
  if (index_st.ok() && S_ISREG(index_st->st_mode)) return OpenIndexed(default_index);
  if (!index_st.ok() && index_st.status().code() != StatusCode::kNotFound) {
    return std::move(index_st).status();
  }
  SHARDSTREAM_ASSIGN_OR_RETURN(std::vector<fs::path> indexes, ListWithSuffix(folder, kIndexSuffix));
  if (indexes.size() == 1) return OpenIndexed(indexes.front());
  if (indexes.size() > 1) {
    std::string names;
    for (const fs::path& p : indexes) names += (names.empty() ? "" : ", ") + p.filename().string();
    return FormatError("ambiguous-index",
                       "folder holds several shard indexes (" + names + "); pass the one to load",
                       folder);
  }
  SHARDSTREAM_ASSIGN_OR_RETURN(std::vector<fs::path> shards,
                               ListWithSuffix(folder, kSafetensorsSuffix));
  if (shards.empty()) {
    return Status::Error(StatusCode::kNotFound, "no-checkpoint",
                         "folder holds no .safetensors file and no shard index")
        .WithPath(folder.string());
  }
  return OpenShardFolder(folder, std::move(shards));
}

}  // namespace

std::string_view CheckpointLayoutName(CheckpointLayout layout) {
  switch (layout) {
    case CheckpointLayout::kSingleFile:
      return "single-file";
    case CheckpointLayout::kShardFolder:
      return "shard-folder";
    case CheckpointLayout::kIndexed:
      return "indexed";
  }
  return "unknown";
}

size_t Checkpoint::tensor_count() const {
  size_t n = 0;
  for (const CheckpointFile& f : files) n += f.header.tensors.size();
  return n;
}

uint64_t Checkpoint::data_bytes() const {
  uint64_t n = 0;
  for (const CheckpointFile& f : files) n += f.header.data_bytes();
  return n;
}

uint64_t Checkpoint::file_bytes() const {
  uint64_t n = 0;
  for (const CheckpointFile& f : files) n += f.header.file_bytes;
  return n;
}

std::optional<TensorLocation> Checkpoint::Find(std::string_view name) const {
  for (uint32_t f = 0; f < files.size(); ++f) {
    if (const TensorInfo* t = files[f].header.Find(name)) {
      return TensorLocation{f, static_cast<uint32_t>(t - files[f].header.tensors.data())};
    }
  }
  return std::nullopt;
}

Result<Checkpoint> OpenCheckpoint(const fs::path& path) {
  SHARDSTREAM_ASSIGN_OR_RETURN(struct stat st, StatPath(path));
  if (S_ISDIR(st.st_mode)) return OpenFolder(path);
  if (path.extension() == ".json") return OpenIndexed(path);
  SHARDSTREAM_ASSIGN_OR_RETURN(CheckpointFile file, ReadFile(path));
  Checkpoint checkpoint;
  checkpoint.source = path;
  checkpoint.layout = CheckpointLayout::kSingleFile;
  checkpoint.files.push_back(std::move(file));
  return checkpoint;
}

}  // namespace shardstream::io
