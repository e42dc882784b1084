// `shardstream inspect CKPT`: validate a checkpoint and describe it without reading tensor data.

#include "cli/args.h"
#include "cli/commands.h"
#include "io/checkpoint.h"
#include "io/format.h"
#include "io/json_writer.h"

#include <array>
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <map>

namespace shardstream::cli {

using io::FormatBytes;
using io::FormatCount;
namespace {

constexpr std::array<FlagSpec, 2> kFlags = {{
    {"json", "", "print one JSON object on stdout (also when the checkpoint is invalid)"},
    {"tensors", "", "list every tensor: name, dtype, shape, bytes, file, offset"},
}};

struct DTypeTotals {
  uint64_t tensors = 0;
  uint64_t bytes = 0;
};

std::map<std::string_view, DTypeTotals> DTypeHistogram(const io::Checkpoint& checkpoint) {
  std::map<std::string_view, DTypeTotals> histogram;
  for (const io::CheckpointFile& file : checkpoint.files) {
    for (const io::TensorInfo& t : file.header.tensors) {
      DTypeTotals& totals = histogram[io::DTypeName(t.dtype)];
      ++totals.tensors;
      totals.bytes += t.size_bytes();
    }
  }
  return histogram;
}

void WriteJson(const std::string& source, const io::Result<io::Checkpoint>& result,
               bool list_tensors) {
  io::JsonWriter json;
  json.BeginObject().Field("path", source);
  if (!result.ok()) {
    const io::Status& error = result.status();
    json.Field("verdict", "invalid");
    json.Key("error").BeginObject();
    json.Field("rule", error.rule()).Field("file", error.path()).Field("tensor", error.tensor());
    json.Key("offset");
    if (error.offset()) {
      json.Uint(*error.offset());
    } else {
      json.Null();
    }
    json.Field("message", error.message()).EndObject();
    json.EndObject();
    std::cout << json.str() << "\n";
    return;
  }
  const io::Checkpoint& checkpoint = *result;
  json.Field("verdict", "valid");
  json.Field("layout", io::CheckpointLayoutName(checkpoint.layout));
  json.Key("index");
  if (checkpoint.index_path) {
    json.String(checkpoint.index_path->string());
  } else {
    json.Null();
  }
  json.Key("files").BeginArray();
  for (const io::CheckpointFile& file : checkpoint.files) {
    json.BeginObject();
    json.Field("path", file.path.string());
    json.Field("file_bytes", file.header.file_bytes);
    json.Field("header_bytes", file.header.header_bytes);
    json.Field("tensors", uint64_t{file.header.tensors.size()});
    json.Field("data_bytes", file.header.data_bytes());
    json.Key("metadata");
    if (file.header.metadata) {
      json.BeginObject();
      for (const auto& [key, value] : *file.header.metadata) json.Field(key, value);
      json.EndObject();
    } else {
      json.Null();
    }
    json.EndObject();
  }
  json.EndArray();
  json.Field("tensors", uint64_t{checkpoint.tensor_count()});
  json.Field("data_bytes", checkpoint.data_bytes());
  json.Key("dtypes").BeginObject();
  for (const auto& [name, totals] : DTypeHistogram(checkpoint)) {
    json.Key(name).BeginObject().Field("tensors", totals.tensors).Field("bytes", totals.bytes);
    json.EndObject();
  }
  json.EndObject();
  if (list_tensors) {
    json.Key("tensor_list").BeginArray();
    for (const io::CheckpointFile& file : checkpoint.files) {
      for (const io::TensorInfo& t : file.header.tensors) {
        json.BeginObject().Field("name", t.name).Field("dtype", io::DTypeName(t.dtype));
        json.Key("shape").BeginArray();
        for (uint64_t d : t.shape) json.Uint(d);
        json.EndArray();
        json.Key("data_offsets").BeginArray().Uint(t.begin).Uint(t.end).EndArray();
        json.Field("file", file.path.string()).EndObject();
      }
    }
    json.EndArray();
  }
  json.EndObject();
  std::cout << json.str() << "\n";
}

void WriteText(const io::Checkpoint& checkpoint, bool list_tensors) {
  std::cout << "checkpoint   " << checkpoint.source.string() << " ("
            << io::CheckpointLayoutName(checkpoint.layout) << ")\n";
  if (checkpoint.index_path)
    std::cout << "index        " << checkpoint.index_path->string() << "\n";
  std::cout << "verdict      valid\n";
  std::cout << "files        " << checkpoint.files.size() << ", "
            << FormatBytes(checkpoint.file_bytes()) << "\n";
  std::cout << "tensors      " << FormatCount(checkpoint.tensor_count()) << "\n";
  std::cout << "tensor data  " << FormatCount(checkpoint.data_bytes()) << " bytes ("
            << FormatBytes(checkpoint.data_bytes()) << ")\n";
  std::cout << "dtypes      ";
  for (const auto& [name, totals] : DTypeHistogram(checkpoint)) {
    std::cout << " " << name << " ×" << totals.tensors << " (" << FormatBytes(totals.bytes) << ")";
  }
  std::cout << "\n";
  for (const io::CheckpointFile& file : checkpoint.files) {
    if (checkpoint.files.size() > 1) {
      std::cout << "file         " << file.path.filename().string() << ": "
                << FormatCount(file.header.tensors.size()) << " tensors, "
                << FormatBytes(file.header.data_bytes()) << ", header "
                << FormatBytes(file.header.header_bytes) << "\n";
    }
    if (file.header.metadata && !file.header.metadata->empty()) {
      std::cout << "metadata    ";
      for (const auto& [key, value] : *file.header.metadata)
        std::cout << " " << key << "=" << value;
      std::cout << "\n";
    }
  }
  if (!list_tensors) return;
  std::cout << "\n";
  for (const io::CheckpointFile& file : checkpoint.files) {
    for (const io::TensorInfo& t : file.header.tensors) {
      std::printf("%-48s %-12s %-20s %12s  %s@%" PRIu64 "\n", t.name.c_str(),
                  std::string(io::DTypeName(t.dtype)).c_str(), io::FormatShape(t.shape).c_str(),
                  FormatBytes(t.size_bytes()).c_str(), file.path.filename().c_str(),
                  file.header.data_offset() + t.begin);
    }
  }
  std::fflush(stdout);
}

}  // namespace

int RunInspect(std::span<char* const> argv) {
  std::optional<Args> args = Args::Parse(argv, kFlags);
  if (!args) return kExitUsage;
  if (args->help()) {
    PrintHelp(
        "inspect CKPT [--json] [--tensors]",
        "Validates a checkpoint as strictly as the reference safetensors implementation and\n"
        "describes it: files, tensors, bytes, dtypes, metadata. CKPT is a .safetensors file, a\n"
        "folder, or a model.safetensors.index.json. Reads headers only.\n"
        "Exit status: 0 valid, 1 invalid (one 'error:' line on stderr), 2 usage.",
        kFlags);
    return kExitOk;
  }
  if (args->positional().size() != 1) {
    PrintError("inspect takes exactly one checkpoint path (see --help)");
    return kExitUsage;
  }
  const std::string& source = args->positional()[0];
  io::Result<io::Checkpoint> checkpoint = io::OpenCheckpoint(source);
  if (args->Has("json")) WriteJson(source, checkpoint, args->Has("tensors"));
  if (!checkpoint.ok()) {
    PrintError(checkpoint.status().ToString());
    return kExitFailure;
  }
  if (!args->Has("json")) WriteText(*checkpoint, args->Has("tensors"));
  return kExitOk;
}

}  // namespace shardstream::cli
