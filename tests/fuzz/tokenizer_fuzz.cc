// Fuzzes the tokenizer.json loader (runtime/text/tokenizer.h). Whatever loads must encode: ids
// stay inside the vocabulary and decode without error.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/text/tokenizer.h"
#include "tests/fuzz/fuzz_file.h"

using lattice::fuzz::Check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lattice;
  const absl::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromJson(json, "fuzz.json");
  if (!tok.ok()) {
    Check(!tok.status().message().empty());
    return 0;
  }
  // A fixed text with the usual hard cases (contractions, digits, CJK, blank lines, an added
  // token), and the start of the input itself as arbitrary bytes.
  const std::string text =
      "Hello world, it's 2024!  <|endoftext|> \xE4\xB8\xAD\xE6\x96\x87\n\n\ttabs\r\n\xFF";
  for (absl::string_view t : {absl::string_view(text), json.substr(0, 256)}) {
    const std::vector<int32_t> ids = (*tok)->Encode(t);
    for (int32_t id : ids) Check(id >= 0 && id < (*tok)->vocab_size());
    Check((*tok)->Decode(ids).ok());
  }
  (void)(*tok)->Decode({-1, 0, 2147483647});
  (void)(*tok)->TokenToId("<|endoftext|>");
  (void)(*tok)->eot_id();
  return 0;
}
