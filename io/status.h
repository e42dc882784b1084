// Status and Result<T>: how io/ and engine/ report failure without exceptions.
//
// A Status is either OK (no allocation) or an error carrying a code, a short rule identifier
// (a stable, greppable token such as "data-offsets" that tests and tools match on), a human
// message, and where it happened: file path, tensor name, byte offset, errno. Errors are built
// with Status::Error(...) and decorated with the With*() setters as they travel up:
//
//   return Status::Error(StatusCode::kInvalidFormat, "size-mismatch", "holds 6 bytes, ...")
//       .WithTensor(name).WithOffset(begin);
//
// Status and Result are values: copyable, movable, not thread-safe to mutate concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace shardstream::io {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,    // the caller asked for something impossible (bad option, bad name)
  kNotFound,           // a path or tensor that does not exist
  kInvalidFormat,      // a file that breaks the safetensors format or the shard index rules
  kIoError,            // the OS said no: open/read/stat failed (errno is set)
  kPermissionDenied,   // EACCES/EPERM on a path
  kResourceExhausted,  // out of memory, staging, file descriptors
  kUnsupported,        // a feature this build or this machine does not have
  kCancelled,          // the progress callback asked to stop
  kInternal,           // a broken invariant inside shardstream: a bug
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK.
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ~Status() = default;

  static Status Ok() { return Status(); }
  // An error. `rule` must be a stable identifier (lowercase, dashes); `message` says what is wrong
  // in plain words, without the path or tensor (those go in With*()).
  static Status Error(StatusCode code, std::string rule, std::string message);
  // Error(kInvalidArgument, ...): the caller asked for something impossible.
  static Status InvalidArgument(std::string rule, std::string message) {
    return Error(StatusCode::kInvalidArgument, std::move(rule), std::move(message));
  }
  // An error from a failed system call: the rule is "io", the message names the call and
  // strerror(err), and the code follows errno (ENOENT → kNotFound, EACCES → kPermissionDenied).
  static Status FromErrno(int err, std::string_view call);

  bool ok() const { return state_ == nullptr; }
  explicit operator bool() const { return ok(); }

  StatusCode code() const { return state_ ? state_->code : StatusCode::kOk; }
  const std::string& rule() const;
  const std::string& message() const;
  const std::string& path() const;
  const std::string& tensor() const;
  std::optional<uint64_t> offset() const;
  int sys_errno() const { return state_ ? state_->sys_errno : 0; }

  // Decorators; no-ops on an OK status. Path and tensor are only set when not already set, so the
  // innermost (most precise) location wins as an error travels outwards.
  Status& WithPath(std::string_view path) &;
  Status&& WithPath(std::string_view path) && { return std::move(WithPath(path)); }
  Status& WithTensor(std::string_view tensor) &;
  Status&& WithTensor(std::string_view tensor) && { return std::move(WithTensor(tensor)); }
  Status& WithOffset(uint64_t offset) &;
  Status&& WithOffset(uint64_t offset) && { return std::move(WithOffset(offset)); }
  Status& WithErrno(int err) &;
  Status&& WithErrno(int err) && { return std::move(WithErrno(err)); }

  // "PATH: tensor 'NAME': MESSAGE (rule: RULE)"; parts that are unset are left out.
  std::string ToString() const;

 private:
  struct State {
    StatusCode code = StatusCode::kOk;
    int sys_errno = 0;
    std::optional<uint64_t> offset;
    std::string rule;
    std::string message;
    std::string path;
    std::string tensor;
  };
  std::unique_ptr<State> state_;
};

// A value or an error Status. Accessing value() of an error is a bug (asserts in debug builds).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : storage_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : storage_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(storage_); }
  const Status& status() const& {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(storage_);
  }
  Status status() && { return ok() ? Status() : std::move(std::get<Status>(storage_)); }

  T& value() & { return std::get<T>(storage_); }
  const T& value() const& { return std::get<T>(storage_); }
  T&& value() && { return std::get<T>(std::move(storage_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> storage_;
};

}  // namespace shardstream::io

#define SHARDSTREAM_CONCAT_INNER(a, b) a##b
#define SHARDSTREAM_CONCAT(a, b) SHARDSTREAM_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function when it is an error.
#define SHARDSTREAM_RETURN_IF_ERROR(expr)                      \
  do {                                                         \
    ::shardstream::io::Status shardstream_status_ = (expr);    \
    if (!shardstream_status_.ok()) return shardstream_status_; \
  } while (0)

// `lhs = value of expr`, or returns its error from the enclosing function.
#define SHARDSTREAM_ASSIGN_OR_RETURN(lhs, expr) \
  SHARDSTREAM_ASSIGN_OR_RETURN_IMPL(SHARDSTREAM_CONCAT(shardstream_result_, __LINE__), lhs, expr)
#define SHARDSTREAM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                      \
  if (!tmp.ok()) return std::move(tmp).status();          \
  lhs = std::move(tmp).value()
