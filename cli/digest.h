// SHA-256 for `shardstream load --digest`, from OpenSSL's libcrypto (its EVP interface, which
// picks the CPU's SHA instructions where there are some).
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace shardstream::cli {

// The lowercase hex SHA-256 (64 characters) of `data`, which is not referenced after the call.
// Thread-safe: every call has a digest context of its own. Throws std::runtime_error, with
// libcrypto's reason, when libcrypto fails (it can only run out of memory here): the command turns
// that into its error line.
std::string Sha256Hex(std::span<const std::byte> data);

}  // namespace shardstream::cli
