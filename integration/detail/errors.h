// Where an internal Status becomes the public LoadError (shardstream/load.h). Used by
// integration/ and the CLI; not installed: the public headers carry no io/ types.
#pragma once

#include "io/status.h"

#include "shardstream/load.h"

namespace shardstream {

// The exception for an error Status: what() is status.ToString(), the fields are copied.
LoadError ToLoadError(const io::Status& status);

// Throws ToLoadError(status) when `status` is an error. The one place a Status becomes an
// exception.
void ThrowIfError(const io::Status& status);

// The public code for an internal one (kOk has none: it is not an error; it maps to kInternal).
ErrorCode ToErrorCode(io::StatusCode code);

}  // namespace shardstream
