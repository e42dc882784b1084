#include "io/status.h"

#include <cerrno>
#include <cstring>

namespace shardstream::io {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kNotFound:
      return "not found";
    case StatusCode::kInvalidFormat:
      return "invalid format";
    case StatusCode::kIoError:
      return "io error";
    case StatusCode::kPermissionDenied:
      return "permission denied";
    case StatusCode::kResourceExhausted:
      return "resource exhausted";
    case StatusCode::kUnsupported:
      return "unsupported";
    case StatusCode::kCancelled:
      return "cancelled";
    case StatusCode::kInternal:
      return "internal error";
  }
  return "unknown";
}

Status::Status(const Status& other)
    : state_(other.state_ ? std::make_unique<State>(*other.state_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) state_ = other.state_ ? std::make_unique<State>(*other.state_) : nullptr;
  return *this;
}

Status Status::Error(StatusCode code, std::string rule, std::string message) {
  Status status;
  status.state_ = std::make_unique<State>();
  status.state_->code = code == StatusCode::kOk ? StatusCode::kInternal : code;
  status.state_->rule = std::move(rule);
  status.state_->message = std::move(message);
  return status;
}

Status Status::FromErrno(int err, std::string_view call) {
  StatusCode code = StatusCode::kIoError;
  std::string rule = "io";
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      code = StatusCode::kNotFound;
      rule = "not-found";
      break;
    case EACCES:
    case EPERM:
      code = StatusCode::kPermissionDenied;
      rule = "permission-denied";
      break;
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      code = StatusCode::kResourceExhausted;
      break;
    case ELOOP:
      rule = "symlink-loop";
      break;
    default:
      break;
  }
  std::string message(call);
  message += " failed: ";
  message += std::strerror(err);
  return Error(code, std::move(rule), std::move(message)).WithErrno(err);
}

namespace {
const std::string& EmptyString() {
  static const std::string kEmpty;
  return kEmpty;
}
}  // namespace

const std::string& Status::rule() const { return state_ ? state_->rule : EmptyString(); }
const std::string& Status::message() const { return state_ ? state_->message : EmptyString(); }
const std::string& Status::path() const { return state_ ? state_->path : EmptyString(); }
const std::string& Status::tensor() const { return state_ ? state_->tensor : EmptyString(); }
std::optional<uint64_t> Status::offset() const { return state_ ? state_->offset : std::nullopt; }

Status& Status::WithPath(std::string_view path) & {
  if (state_ && state_->path.empty()) state_->path = path;
  return *this;
}
Status& Status::WithTensor(std::string_view tensor) & {
  if (state_ && state_->tensor.empty()) state_->tensor = tensor;
  return *this;
}
Status& Status::WithOffset(uint64_t offset) & {
  if (state_ && !state_->offset) state_->offset = offset;
  return *this;
}
Status& Status::WithErrno(int err) & {
  if (state_) state_->sys_errno = err;
  return *this;
}

std::string Status::ToString() const {
  if (!state_) return "ok";
  std::string out;
  if (!state_->path.empty()) {
    out += state_->path;
    out += ": ";
  }
  if (!state_->tensor.empty()) {
    out += "tensor '";
    out += state_->tensor;
    out += "': ";
  }
  out += state_->message.empty() ? std::string(StatusCodeName(state_->code)) : state_->message;
  if (state_->offset) {
    out += " (at byte ";
    out += std::to_string(*state_->offset);
    out += ")";
  }
  if (!state_->rule.empty()) {
    out += " (rule: ";
    out += state_->rule;
    out += ")";
  }
  return out;
}

}  // namespace shardstream::io
