// shardstream._core: the thin binding over the fill core (engine/fill.h).
//
// It converts arguments, runs engine::Fill on a thread of its own with the GIL released, and
// turns an error Status into the one exception type the Python package registers
// (shardstream.LoadError). Everything torch-shaped (dtypes, shapes, strides, slices → runs,
// allocation, modules) lives in plain Python (python/shardstream/); nothing here includes torch.
//
// Why a thread per fill: Python runs signal handlers (Ctrl-C) and the user's progress callback on
// the thread that called in, and only while it holds the GIL. The caller's thread therefore waits
// in FillJob.wait(timeout) slices, checks for signals and calls the callback between them, and
// cancels the job on an exception; the engine's own progress hook only stores numbers and reads
// the cancel flag, so no engine thread ever needs the GIL. A job joins its thread before it is
// destroyed: a finished load leaves no thread behind.
#include "cuda/device_upload.h"
#include "engine/cast.h"
#include "engine/dequantize.h"
#include "engine/fill.h"
#include "engine/host_pool.h"
#include "engine/mapped.h"
#include "engine/runs.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/status.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shardstream/read.h"

namespace nb = nanobind;

namespace shardstream::python {
namespace {

// shardstream.LoadError's factory, registered by the package at import:
// factory(code, rule, message, file, tensor, offset, errno, text) -> exception instance.
nb::object& ErrorFactory() {
  static nb::object* factory = new nb::object();  // never destroyed: outlives the interpreter
  return *factory;
}

[[noreturn]] void Raise(const io::Status& status) {
  nb::object& factory = ErrorFactory();
  const std::string text = status.ToString();
  if (!factory.is_valid()) throw std::runtime_error(text);
  nb::object offset = status.offset() ? nb::cast(*status.offset()) : nb::none();
  nb::object error =
      factory(std::string(io::StatusCodeName(status.code())), status.rule(), status.message(),
              status.path(), status.tensor(), offset, status.sys_errno(), text);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
  throw nb::python_error();
}

[[noreturn]] void RaiseRule(std::string rule, std::string message) {
  Raise(io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message)));
}

struct Checkpoint {
  std::shared_ptr<const io::Checkpoint> value;
};

// CUDA targets: pinned staging kept across loads, cudaMemcpyAsync and casts on the device
// (cuda/device_upload.h), the same path as the C++ library's.
engine::DeviceUploader& Uploader() {
  static cuda::CudaUploader* uploader = new cuda::CudaUploader(cuda::CudaUploadOptions{});
  return *uploader;
}

#ifdef SHARDSTREAM_HAVE_CUDA
constexpr bool kCudaBuilt = true;
#else
constexpr bool kCudaBuilt = false;
#endif

Checkpoint Open(const std::string& path) {
  std::optional<io::Result<io::Checkpoint>> result;
  {
    nb::gil_scoped_release release;
    result.emplace(io::OpenCheckpoint(path));
  }
  if (!result->ok()) Raise(result->status());
  return Checkpoint{std::make_shared<const io::Checkpoint>(std::move(*result).value())};
}

// (name, dtype, shape, file, index, begin, nbytes) for every tensor, file by file, each file's
// tensors in header order.
nb::list Tensors(const Checkpoint& checkpoint) {
  nb::list out;
  const io::Checkpoint& c = *checkpoint.value;
  for (uint32_t f = 0; f < c.files.size(); ++f) {
    const std::vector<io::TensorInfo>& tensors = c.files[f].header.tensors;
    for (uint32_t i = 0; i < tensors.size(); ++i) {
      const io::TensorInfo& t = tensors[i];
      nb::list shape;
      for (uint64_t d : t.shape) shape.append(d);
      out.append(nb::make_tuple(t.name, std::string(io::DTypeName(t.dtype)), nb::tuple(shape), f, i,
                                t.begin, t.size_bytes()));
    }
  }
  return out;
}

nb::object Metadata(const Checkpoint& checkpoint, uint32_t file) {
  const io::Checkpoint& c = *checkpoint.value;
  if (file >= c.files.size()) throw nb::index_error("no such file in the checkpoint");
  const auto& metadata = c.files[file].header.metadata;
  if (!metadata) return nb::none();
  nb::dict out;
  for (const auto& [key, value] : *metadata) out[nb::cast(key)] = nb::cast(value);
  return out;
}

nb::list Files(const Checkpoint& checkpoint) {
  nb::list out;
  for (const io::CheckpointFile& file : checkpoint.value->files) out.append(file.path.string());
  return out;
}

ReadOptions ReadOptionsFrom(const nb::dict& options) {
  ReadOptions read;
  for (auto [key_object, value] : options) {
    const std::string key = nb::cast<std::string>(key_object);
    if (value.is_none()) continue;
    if (key == "io") {
      const std::string name = nb::cast<std::string>(value);
      std::optional<IoMode> mode = ParseIoMode(name);
      if (!mode) RaiseRule("option", "io must be auto, pread, mmap or uring, not '" + name + "'");
      read.io = *mode;
    } else if (key == "direct") {
      const std::string name = nb::cast<std::string>(value);
      std::optional<DirectIo> mode = ParseDirectIo(name);
      if (!mode) RaiseRule("option", "direct must be auto, on or off, not '" + name + "'");
      read.direct = *mode;
    } else if (key == "threads") {
      read.threads = nb::cast<int>(value);
    } else if (key == "staging_bytes") {
      read.staging_bytes = nb::cast<uint64_t>(value);
    } else if (key == "chunk_bytes") {
      read.chunk_bytes = nb::cast<uint64_t>(value);
    } else if (key == "queue_depth") {
      read.queue_depth = nb::cast<uint32_t>(value);
    } else if (key == "sqpoll") {
      read.sqpoll = nb::cast<bool>(value);
    } else if (key == "read_gap_bytes") {
      read.read_gap_bytes = nb::cast<uint64_t>(value);
    } else if (key == "huge_pages") {
      read.huge_pages = nb::cast<bool>(value);
    } else {
      RaiseRule("option", "unknown fill option '" + key + "'");
    }
  }
  return read;
}

std::vector<int64_t> Int64s(nb::handle sequence) {
  std::vector<int64_t> out;
  for (nb::handle item : sequence) out.push_back(nb::cast<int64_t>(item));
  return out;
}

// layout = (source_shape, source_bits, slice, destination_strides, destination_bits): the runs of
// engine::SliceRuns, `slice` a sequence of (start, step, count) per source dimension.
io::Result<std::vector<engine::Run>> RunsFrom(nb::handle layout) {
  nb::tuple l = nb::cast<nb::tuple>(layout);
  if (l.size() != 5) RaiseRule("target", "a target layout has 5 fields");
  const std::vector<int64_t> shape = Int64s(l[0]);
  std::vector<engine::SliceDim> slice;
  for (nb::handle dim : l[2]) {
    nb::tuple d = nb::cast<nb::tuple>(dim);
    slice.push_back(engine::SliceDim{nb::cast<int64_t>(d[0]), nb::cast<int64_t>(d[1]),
                                     nb::cast<int64_t>(d[2])});
  }
  const std::vector<int64_t> strides = Int64s(l[3]);
  return engine::SliceRuns(shape, slice, strides, nb::cast<uint32_t>(l[1]),
                           nb::cast<uint32_t>(l[4]));
}

// name -> (bits, kind, torch dtype name): the one dtype table, for the package to derive its
// torch mapping from.
nb::dict DTypes() {
  static constexpr const char* kKinds[] = {"bool",   "unsigned", "signed", "float",
                                           "float8", "complex",  "packed"};
  nb::dict out;
  for (io::DType d : io::AllDTypes()) {
    out[nb::str(std::string(io::DTypeName(d)).c_str())] =
        nb::make_tuple(io::DTypeBits(d), kKinds[static_cast<int>(io::DTypeKindOf(d))],
                       std::string(io::TorchDTypeName(d)));
  }
  return out;
}

std::string CastRefusal(const std::string& from, const std::string& to) {
  std::optional<io::DType> f = io::ParseDType(from);
  std::optional<io::DType> t = io::ParseDType(to);
  if (!f || !t) RaiseRule("dtype", "unknown dtype '" + (f ? to : from) + "'");
  return engine::CastRefusal(*f, *t);
}

io::DType DequantizeDType(const std::string& name) {
  std::optional<io::DType> parsed = io::ParseDType(name);
  if (!parsed) RaiseRule("dtype", "unknown dtype '" + name + "'");
  return *parsed;
}

// The native dequantize (engine/dequantize.h) on host addresses the caller owns for the call
// (torch tensors' data_ptr, kept alive by the caller). "" when done; the reason when the engine
// declined the input (a NaN code or scale: the caller runs the framework's op); raises for a bad
// argument.
std::string DequantizeResult(const io::Status& status) {
  if (status.ok()) return {};
  if (status.code() == io::StatusCode::kUnsupported) return status.message();
  Raise(status);
}

std::string DequantizeMxfp4(uintptr_t blocks, uintptr_t scales, std::vector<uint64_t> shape,
                            const std::string& to, uintptr_t out) {
  if (shape.size() != 4) RaiseRule("dequantize", "MXFP4 blocks are 4-dimensional");
  const io::DType out_dtype = DequantizeDType(to);
  const engine::Mxfp4Layout layout{shape[0], shape[1], shape[2], shape[3]};
  io::Status status;
  {
    nb::gil_scoped_release release;
    status = engine::DequantizeMxfp4(reinterpret_cast<const uint8_t*>(blocks),
                                     reinterpret_cast<const uint8_t*>(scales), layout, out_dtype,
                                     reinterpret_cast<std::byte*>(out));
  }
  return DequantizeResult(status);
}

std::string DequantizeFp8(uintptr_t weight, uintptr_t scales, const std::string& scale_dtype,
                          std::vector<uint64_t> shape, const std::string& to, uintptr_t out) {
  if (shape.size() != 5) {
    RaiseRule("dequantize", "FP8 layout is (batch, rows, cols, scale_rows, scale_cols)");
  }
  const io::DType scale = DequantizeDType(scale_dtype);
  const io::DType out_dtype = DequantizeDType(to);
  const engine::BlockScaleLayout layout{shape[0], shape[1], shape[2], shape[3], shape[4]};
  io::Status status;
  {
    nb::gil_scoped_release release;
    status = engine::DequantizeFp8BlockScale(reinterpret_cast<const uint8_t*>(weight),
                                             reinterpret_cast<const std::byte*>(scales), scale,
                                             layout, out_dtype, reinterpret_cast<std::byte*>(out));
  }
  return DequantizeResult(status);
}

nb::dict Defaults() {
  nb::dict out;
  out["queue_depth"] = kDefaultQueueDepth;
  out["staging_bytes"] = kDefaultStagingBytes;
  out["chunk_bytes"] = kDefaultChunkBytes;
  out["staged_chunk_bytes"] = kDefaultStagedChunkBytes;
  out["read_gap_bytes"] = kDefaultReadGapBytes;
  out["copy_streams"] = kDefaultCopyStreams;
  out["device_cast_scratch_bytes"] = kDefaultDeviceCastScratchBytes;
  out["read_ahead_bytes"] = kDefaultReadAheadBytes;
  out["convert_scratch_bytes"] = kDefaultConvertScratchBytes;
  return out;
}

// One piece of engine work on a thread of its own, or on the caller's with the GIL released: the
// lifecycle FillJob and PopulateJob share. A derived class starts its work with Start and must
// call Stop first thing in its destructor (the work reads its members). Thread-safe: Wait,
// Cancel and the derived readers may be called from any Python thread.
class BackgroundJob {
 public:
  BackgroundJob(const BackgroundJob&) = delete;
  BackgroundJob& operator=(const BackgroundJob&) = delete;

  // Waits up to `timeout` seconds (forever when negative); true once the work has finished.
  bool Wait(double timeout) {
    nb::gil_scoped_release release;
    std::unique_lock<std::mutex> lock(mutex_);
    if (timeout < 0) {
      finished_cv_.wait(lock, [this] { return finished_; });
    } else {
      finished_cv_.wait_for(lock, std::chrono::duration<double>(timeout),
                            [this] { return finished_; });
    }
    if (!finished_) return false;
    lock.unlock();
    if (worker_.joinable()) worker_.join();
    return true;
  }

  void Cancel() { cancel_.store(true); }

 protected:
  BackgroundJob() = default;
  ~BackgroundJob() = default;  // Stop has joined the worker (derived destructors call it)

  // `inline_run`: the work runs here before Start returns (small jobs, where a thread start would
  // dominate and no cancel point is needed).
  void Start(bool inline_run, std::function<io::Status()> work) {
    work_ = std::move(work);
    if (inline_run) {
      nb::gil_scoped_release release;
      Run();
    } else {
      worker_ = std::thread([this] { Run(); });
    }
  }
  // Asks the work to stop and waits for its thread.
  void Stop() {
    cancel_.store(true);
    if (worker_.joinable()) worker_.join();
  }
  // The work's outcome, after Wait(-1); raises LoadError when it failed.
  void RaiseIfFailed() {
    Wait(-1);
    if (!status_.ok()) Raise(status_);
  }

  std::atomic<bool> cancel_{false};
  std::mutex mutex_;
  std::condition_variable finished_cv_;  // the end of the work (and what derived jobs signal)
  bool finished_ = false;                // under mutex_

 private:
  void Run() {
    io::Status status = work_();
    std::lock_guard<std::mutex> lock(mutex_);
    status_ = std::move(status);
    finished_ = true;
    finished_cv_.notify_all();
  }

  std::function<io::Status()> work_;
  io::Status status_;  // under mutex_ until finished_
  std::thread worker_;
};

// One load in flight: engine::Fill on its own thread.
class FillJob : public BackgroundJob {
 public:
  // `inline_run`: fill on the caller's thread (GIL released) before returning, for small loads
  // where a thread start would dominate and no cancel point is needed.
  FillJob(Checkpoint checkpoint, std::vector<engine::Target> targets, engine::FillSetup setup,
          bool inline_run)
      : checkpoint_(std::move(checkpoint.value)),
        targets_(std::move(targets)),
        setup_(std::move(setup)) {
    setup_.read.progress = [this](const Progress& progress) {
      done_.store(progress.done_bytes, std::memory_order_relaxed);
      total_.store(progress.total_bytes, std::memory_order_relaxed);
      return !cancel_.load(std::memory_order_relaxed);
    };
    // Engine threads report each target complete (engine::FillSetup::target_done); the caller
    // takes them with TakeCompleted. One short lock per chunk's completed targets.
    setup_.target_done = [this](std::span<const size_t> targets) {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t t : targets) completed_.push_back(static_cast<uint32_t>(t));
      finished_cv_.notify_all();
    };
    Start(inline_run, [this] { return engine::Fill(*checkpoint_, targets_, setup_, &report_); });
  }
  FillJob(const FillJob&) = delete;
  FillJob& operator=(const FillJob&) = delete;
  ~FillJob() { Stop(); }

  // The indices (into the targets given to start_fill) of the targets completed since the last
  // call: every byte of each is in its destination. Waits up to `timeout` seconds (forever when
  // negative) for at least one, or for the end of the fill; [] then means none is left to come
  // (check wait/result) or the time ran out. The GIL is released while waiting.
  nb::list TakeCompleted(double timeout) {
    std::vector<uint32_t> taken;
    {
      nb::gil_scoped_release release;
      std::unique_lock<std::mutex> lock(mutex_);
      auto ready = [this] { return !completed_.empty() || finished_; };
      if (timeout < 0) {
        finished_cv_.wait(lock, ready);
      } else {
        finished_cv_.wait_for(lock, std::chrono::duration<double>(timeout), ready);
      }
      taken.swap(completed_);
    }
    nb::list out;
    for (uint32_t t : taken) out.append(t);
    return out;
  }

  nb::tuple ProgressNow() const {
    return nb::make_tuple(done_.load(std::memory_order_relaxed),
                          total_.load(std::memory_order_relaxed));
  }

  // The report as a dict; raises LoadError when the fill failed. Waits for the end first.
  nb::dict Result() {
    RaiseIfFailed();
    nb::dict out;
    out["io"] = report_.io;
    out["fallback"] = report_.fallback;
    out["peak_in_flight"] = report_.peak_in_flight;
    out["chunk_bytes"] = report_.chunk_bytes;
    out["direct"] = report_.direct;
    out["resident_fraction"] = report_.resident_fraction;
    out["sqpoll"] = report_.sqpoll;
    out["threads"] = report_.threads;
    out["readers"] = report_.readers;
    out["copy_threads"] = report_.copy_threads;
    out["payload_bytes"] = report_.payload_bytes;
    out["read_bytes"] = report_.read_bytes;
    out["staging_slots"] = report_.staging_slots;
    out["slot_bytes"] = report_.slot_bytes;
    out["peak_slots_in_use"] = report_.peak_slots_in_use;
    out["io_busy_seconds"] = report_.io_busy_seconds;
    out["copy_busy_seconds"] = report_.copy_busy_seconds;
    out["overlap_seconds"] = report_.overlap_seconds;
    out["cast_scratch_bytes"] = report_.cast_scratch_bytes;
    out["pin_seconds"] = report_.pin_seconds;
    out["staging_reused"] = report_.staging_reused;
    out["copy_streams"] = report_.copy_streams;
    out["device_scratch_bytes"] = report_.device_scratch_bytes;
    out["gpu_upload"] = report_.gpu_upload;
    nb::list notes;
    for (const std::string& note : report_.notes) notes.append(note);
    out["notes"] = notes;
    nb::list stages;
    for (const auto& [name, seconds] : report_.stages) stages.append(nb::make_tuple(name, seconds));
    out["stages"] = stages;
    return out;
  }

 private:
  std::shared_ptr<const io::Checkpoint> checkpoint_;
  std::vector<engine::Target> targets_;
  engine::FillSetup setup_;
  ReadReport report_;
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> total_{0};
  std::vector<uint32_t> completed_;  // completed targets not yet taken (under mutex_; each one
                                     // signals finished_cv_)
};

// targets: a sequence of (file, index, address, device, dtype, layout) where layout is None (the
// whole tensor, contiguous at address) or what RunsFrom takes (a source slice, a strided
// destination). The caller keeps every destination alive until the job has finished.
std::unique_ptr<FillJob> StartFill(const Checkpoint& checkpoint, const nb::sequence& targets,
                                   const nb::dict& options, bool inline_run) {
  const io::Checkpoint& c = *checkpoint.value;
  engine::FillSetup setup;
  setup.read = ReadOptionsFrom(options);
  setup.devices = &Uploader();
  std::vector<engine::Target> fill_targets;
  fill_targets.reserve(nb::len(targets));
  for (nb::handle item : targets) {
    nb::tuple t = nb::cast<nb::tuple>(item);
    if (t.size() != 6) RaiseRule("target", "a fill target has 6 fields");
    engine::Target target;
    target.source.file = nb::cast<uint32_t>(t[0]);
    target.source.index = nb::cast<uint32_t>(t[1]);
    if (target.source.file >= c.files.size() ||
        target.source.index >= c.files[target.source.file].header.tensors.size()) {
      RaiseRule("target", "a fill target names a tensor the checkpoint does not have");
    }
    target.destination = reinterpret_cast<std::byte*>(nb::cast<uintptr_t>(t[2]));
    target.device = nb::cast<int>(t[3]);
    const std::string dtype = nb::cast<std::string>(t[4]);
    std::optional<io::DType> parsed = io::ParseDType(dtype);
    if (!parsed) RaiseRule("dtype", "unknown destination dtype '" + dtype + "'");
    target.dtype = *parsed;
    if (!t[5].is_none()) {
      io::Result<std::vector<engine::Run>> runs = RunsFrom(t[5]);
      if (!runs.ok()) {
        const io::TensorInfo& info = c.tensor(target.source);
        Raise(io::Status(runs.status())
                  .WithPath(c.files[target.source.file].path.string())
                  .WithTensor(info.name));
      }
      target.runs = std::move(runs).value();
    }
    fill_targets.push_back(std::move(target));
  }
  return std::make_unique<FillJob>(checkpoint, std::move(fill_targets), std::move(setup),
                                   inline_run);
}

// ---------------------------------------------------------------------------------------------
// Mapped CPU tensors (engine/mapped.h): the files' private mappings as Python buffers, which the
// package turns into tensors with torch.frombuffer, and the populate step on a thread of its own.

struct Mapping {
  std::shared_ptr<const engine::MappedCheckpoint> value;
};

// One file's data section as a writable buffer. Holds that file's mapping: torch.frombuffer keeps
// this object (and so the mapping) alive for as long as any tensor made from it lives.
struct MappedData {
  std::shared_ptr<io::MappedFile> mapping;
  std::byte* data = nullptr;
  uint64_t size_bytes = 0;
};

// The buffer protocol's getbuffer slot: bytes (format "B"), writable (copy on write: the file
// never changes). PyBuffer_FillInfo sets view->obj to `self` (a new reference), which is what
// keeps the mapping alive while a memoryview or tensor holds the buffer.
int MappedDataGetBuffer(PyObject* self, Py_buffer* view, int flags) {
  MappedData* d = nb::inst_ptr<MappedData>(self);
  static char empty = 0;  // a buffer's pointer must not be null, even for 0 bytes
  void* data = d->size_bytes > 0 ? static_cast<void*>(d->data) : static_cast<void*>(&empty);
  return PyBuffer_FillInfo(view, self, data, static_cast<Py_ssize_t>(d->size_bytes),
                           /*readonly=*/0, flags);
}

const PyType_Slot kMappedDataSlots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(&MappedDataGetBuffer)},
    {0, nullptr},
};

Mapping MapCheckpoint(const Checkpoint& checkpoint) {
  std::optional<io::Result<engine::MappedCheckpoint>> result;
  {
    nb::gil_scoped_release release;
    result.emplace(engine::MappedCheckpoint::Map(*checkpoint.value));
  }
  if (!result->ok()) Raise(result->status());
  return Mapping{std::make_shared<const engine::MappedCheckpoint>(std::move(*result).value())};
}

MappedData MappingFile(const Mapping& mapping, size_t file) {
  const engine::MappedCheckpoint& m = *mapping.value;
  if (file >= m.size()) throw nb::index_error("no such file in the checkpoint");
  std::span<std::byte> data = m.Data(file);
  return MappedData{m.file(file), data.data(), data.size()};
}

// One populate in flight, on its own thread (as FillJob: the caller waits in slices so that
// Ctrl-C and close() can cancel it). Holds the mapping until its thread has finished.
class PopulateJob : public BackgroundJob {
 public:
  PopulateJob(Mapping mapping, std::vector<engine::PopulateRange> ranges,
              engine::PopulateOptions options, bool inline_run)
      : mapping_(std::move(mapping.value)), ranges_(std::move(ranges)), options_(options) {
    options_.cancel = &cancel_;
    options_.done_bytes = &done_;
    Start(inline_run, [this] { return engine::Populate(*mapping_, ranges_, options_, &report_); });
  }
  PopulateJob(const PopulateJob&) = delete;
  PopulateJob& operator=(const PopulateJob&) = delete;
  ~PopulateJob() { Stop(); }
  uint64_t DoneBytes() const { return done_.load(std::memory_order_relaxed); }

  // {populated_bytes, populate_resident_bytes, populate_seconds, populate_threads,
  // populate_chunks, populate_method};
  // raises LoadError when populate failed. Waits for the end first.
  nb::dict Result() {
    RaiseIfFailed();
    nb::dict out;
    out["populated_bytes"] = report_.populated_bytes;
    out["populate_resident_bytes"] = report_.resident_bytes;
    out["populate_seconds"] = report_.seconds;
    out["populate_threads"] = report_.threads;
    out["populate_chunks"] = report_.chunks;
    out["populate_method"] = report_.method;
    return out;
  }

 private:
  std::shared_ptr<const engine::MappedCheckpoint> mapping_;
  std::vector<engine::PopulateRange> ranges_;
  engine::PopulateOptions options_;
  engine::PopulateReport report_;
  std::atomic<uint64_t> done_{0};
};

// ranges: a sequence of (file, offset in the data section, bytes). threads 0: one per core.
std::unique_ptr<PopulateJob> StartPopulate(const Mapping& mapping, const nb::sequence& ranges,
                                           int threads, uint64_t chunk_bytes, bool inline_run,
                                           bool skip_resident) {
  std::vector<engine::PopulateRange> out;
  out.reserve(nb::len(ranges));
  for (nb::handle item : ranges) {
    nb::tuple r = nb::cast<nb::tuple>(item);
    if (r.size() != 3) RaiseRule("populate-range", "a populate range has 3 fields");
    out.push_back(engine::PopulateRange{nb::cast<uint32_t>(r[0]), nb::cast<uint64_t>(r[1]),
                                        nb::cast<uint64_t>(r[2])});
  }
  if (threads < 0) RaiseRule("option", "threads must be 0 (one per core) or positive");
  engine::PopulateOptions options;
  options.threads = threads;
  if (chunk_bytes > 0) options.chunk_bytes = chunk_bytes;
  options.skip_resident = skip_resident;
  return std::make_unique<PopulateJob>(mapping, std::move(out), options, inline_run);
}

// ---------------------------------------------------------------------------------------------
// Pooled host destinations (engine/host_pool.h) for owned CPU tensors that a stream hands out:
// a PooledBuffer is a writable buffer whose lease returns to the pool when the Python object
// dies, which torch.frombuffer delays until the last tensor made from it is gone.

struct HostPool {
  std::shared_ptr<engine::HostBufferPool> value;
};

struct PooledBuffer {
  engine::HostLease lease;
};

int PooledBufferGetBuffer(PyObject* self, Py_buffer* view, int flags) {
  PooledBuffer* b = nb::inst_ptr<PooledBuffer>(self);
  return PyBuffer_FillInfo(view, self, b->lease.data(),
                           static_cast<Py_ssize_t>(b->lease.size_bytes()), /*readonly=*/0, flags);
}

const PyType_Slot kPooledBufferSlots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(&PooledBufferGetBuffer)},
    {0, nullptr},
};

PooledBuffer PoolAcquire(const HostPool& pool, uint64_t size_bytes) {
  std::optional<io::Result<engine::HostLease>> lease;
  {
    nb::gil_scoped_release release;  // a fresh large buffer is an mmap
    lease.emplace(pool.value->Acquire(size_bytes));
  }
  if (!lease->ok()) Raise(lease->status());
  return PooledBuffer{std::move(*lease).value()};
}

nb::dict PoolStats(const HostPool& pool) {
  const engine::HostPoolStats s = pool.value->stats();
  nb::dict out;
  out["allocated"] = s.allocated;
  out["reused"] = s.reused;
  out["cached_bytes"] = s.cached_bytes;
  out["leased_bytes"] = s.leased_bytes;
  out["peak_leased_bytes"] = s.peak_leased_bytes;
  return out;
}

}  // namespace
}  // namespace shardstream::python

NB_MODULE(_core, m) {
  using namespace shardstream::python;
  m.doc() = "shardstream's fill core (private: use the shardstream package)";
  // Views of a mapping that a program keeps until it exits (a module-level dict of tensors) hold
  // the mapping's buffer object through interpreter shutdown, which nanobind would report as a
  // leak on every such exit; they are released with the process.
  nb::set_leak_warnings(false);

  m.def(
      "_set_error_factory", [](nb::object factory) { ErrorFactory() = std::move(factory); },
      "Registers the callable that builds shardstream.LoadError.");

  nb::class_<Checkpoint>(m, "Checkpoint")
      .def_prop_ro("source", [](const Checkpoint& c) { return c.value->source.string(); })
      .def_prop_ro("layout",
                   [](const Checkpoint& c) {
                     return std::string(shardstream::io::CheckpointLayoutName(c.value->layout));
                   })
      .def_prop_ro("index_path",
                   [](const Checkpoint& c) -> std::optional<std::string> {
                     if (!c.value->index_path) return std::nullopt;
                     return c.value->index_path->string();
                   })
      .def_prop_ro("data_bytes", [](const Checkpoint& c) { return c.value->data_bytes(); })
      .def_prop_ro("files", &Files)
      .def("tensors", &Tensors)
      .def("metadata", &Metadata, nb::arg("file"));

  m.def("open_checkpoint", &Open, nb::arg("path"),
        "Reads and validates every header of a checkpoint (file, folder or index).");

  nb::class_<FillJob>(m, "FillJob")
      .def("wait", &FillJob::Wait, nb::arg("timeout"))
      .def("cancel", &FillJob::Cancel)
      .def("take_completed", &FillJob::TakeCompleted, nb::arg("timeout"))
      .def("progress", &FillJob::ProgressNow)
      .def("result", &FillJob::Result);

  m.def("start_fill", &StartFill, nb::arg("checkpoint"), nb::arg("targets"), nb::arg("options"),
        nb::arg("inline_run") = false);

  nb::class_<MappedData>(m, "MappedData", nb::type_slots(kMappedDataSlots))
      .def_prop_ro("nbytes", [](const MappedData& d) { return d.size_bytes; });

  nb::class_<Mapping>(m, "Mapping")
      .def_prop_ro("files", [](const Mapping& mapping) { return mapping.value->size(); })
      .def("file", &MappingFile, nb::arg("file"),
           "File `file`'s data section (tensor offsets count from its start) as a writable "
           "buffer that keeps the file mapped while it, or anything made from it, lives.");
  m.def("map_checkpoint", &MapCheckpoint, nb::arg("checkpoint"),
        "Maps every file of a checkpoint privately (copy on write: writes never reach the file).");

  nb::class_<PopulateJob>(m, "PopulateJob")
      .def("wait", &PopulateJob::Wait, nb::arg("timeout"))
      .def("cancel", &PopulateJob::Cancel)
      .def("done_bytes", &PopulateJob::DoneBytes)
      .def("result", &PopulateJob::Result);
  m.def("start_populate", &StartPopulate, nb::arg("mapping"), nb::arg("ranges"),
        nb::arg("threads") = 0, nb::arg("chunk_bytes") = 0, nb::arg("inline_run") = false,
        nb::arg("skip_resident") = false,
        "Makes the mapped pages under `ranges` resident on worker threads (MADV_POPULATE_READ); "
        "with skip_resident, chunks already in the page cache are left to the consumer.");

  nb::class_<PooledBuffer>(m, "PooledBuffer", nb::type_slots(kPooledBufferSlots))
      .def_prop_ro("nbytes", [](const PooledBuffer& b) { return b.lease.size_bytes(); });
  nb::class_<HostPool>(m, "HostPool")
      .def(
          "__init__",
          [](HostPool* self, uint64_t max_cached_bytes) {
            new (self)
                HostPool{std::make_shared<shardstream::engine::HostBufferPool>(max_cached_bytes)};
          },
          nb::arg("max_cached_bytes"))
      .def("acquire", &PoolAcquire, nb::arg("nbytes"),
           "A writable buffer of `nbytes` (a released one of that size when there is one); it "
           "returns to the pool when the buffer object, and so every tensor made from it, is "
           "gone.")
      .def("stats", &PoolStats);

  m.def("dtypes", &DTypes,
        "The dtype table (io/dtype.h): name -> (bits, kind, torch dtype name or '').");
  m.def("cast_refusal", &CastRefusal, nb::arg("source"), nb::arg("destination"),
        "Why a load does not convert `source` into `destination` (engine/cast.h), '' when it "
        "does: the one verdict every front end uses.");
  m.def("dequantize_mxfp4", &DequantizeMxfp4, nb::arg("blocks"), nb::arg("scales"),
        nb::arg("shape"), nb::arg("to"), nb::arg("out"),
        "MXFP4 blocks (U8 [E, R, G, B]) and E8M0 scales (U8 [E, R, G]) at host addresses into "
        "`out` ([E, G*B*2, R] in `to`): '' when done, else why declined.");
  m.def("dequantize_fp8", &DequantizeFp8, nb::arg("weight"), nb::arg("scales"),
        nb::arg("scale_dtype"), nb::arg("shape"), nb::arg("to"), nb::arg("out"),
        "F8_E4M3 weight times its block scale at host addresses into `out` in `to`; shape is "
        "(batch, rows, cols, scale_rows, scale_cols): '' when done, else why declined.");
  m.def("defaults", &Defaults, "The defaults of shardstream/read.h, by name.");
  m.def(
      "cuda_built", [] { return kCudaBuilt; }, "Whether this build can fill CUDA targets.");
  m.def("cuda_reason", [] {
    return std::string(
        "this shardstream extension was built without the CUDA toolkit (rebuild it where "
        "CMake finds CUDA: pip install . with nvcc on PATH)");
  });
}
