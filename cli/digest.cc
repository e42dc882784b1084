#include "cli/digest.h"

#include <array>
#include <memory>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdexcept>
#include <string_view>

namespace shardstream::cli {
namespace {

struct MdContextFree {
  void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};

[[noreturn]] void ThrowCryptoError(const char* call) {
  std::array<char, 256> reason{};
  ERR_error_string_n(ERR_get_error(), reason.data(), reason.size());
  throw std::runtime_error(std::string("sha256: ") + call + " failed: " + reason.data());
}

}  // namespace

std::string Sha256Hex(std::span<const std::byte> data) {
  std::unique_ptr<EVP_MD_CTX, MdContextFree> context(EVP_MD_CTX_new());
  if (!context) ThrowCryptoError("EVP_MD_CTX_new");
  if (EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1) {
    ThrowCryptoError("EVP_DigestInit_ex");
  }
  if (EVP_DigestUpdate(context.get(), data.data(), data.size()) != 1) {
    ThrowCryptoError("EVP_DigestUpdate");
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int digest_bytes = 0;
  if (EVP_DigestFinal_ex(context.get(), digest.data(), &digest_bytes) != 1) {
    ThrowCryptoError("EVP_DigestFinal_ex");
  }
  constexpr std::string_view kHexDigits = "0123456789abcdef";
  std::string hex;
  hex.reserve(size_t{2} * digest_bytes);
  for (unsigned int i = 0; i < digest_bytes; ++i) {
    hex += kHexDigits[digest[i] >> 4];
    hex += kHexDigits[digest[i] & 0xf];
  }
  return hex;
}

}  // namespace shardstream::cli
