// libFuzzer target: tokenizer.json reading, by the canonical-table builder and by the BPE
// encoder, then encoding and decoding text with an accepted tokenizer.
//
// Input: the tokenizer.json text, optionally followed by a NUL byte and the text to encode
// (a JSON text cannot contain a raw NUL, so the split is unambiguous).
#include "fuzz_common.hpp"

#include <engram/vocab/bpe_encoder.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <cstdint>
#include <optional>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input = engram_fuzz::text_of(data, size);
    const std::size_t nul = input.find('\0');
    const std::string_view json = input.substr(0, nul);
    const std::string_view text =
        nul == std::string_view::npos ? std::string_view("Hello, world! 123") : input.substr(nul + 1);

    std::optional<engram::canonical_table> table;
    engram_fuzz::run_one([&] {
        table = engram::canonical_table_from_tokenizer_json_text(json);
        engram_fuzz::require(table->vocab_size() > 0, "an accepted vocabulary is not empty");
        engram_fuzz::require(static_cast<std::size_t>(table->canonical_size()) <= table->vocab_size(), "V' <= V");
    });
    engram_fuzz::run_one([&] {
        const auto encoder = engram::bpe_encoder::from_tokenizer_json_text(json);
        (void)encoder.pre_tokenizer_name();
        (void)encoder.pre_tokenize(text);
        const auto ids = encoder.encode(text);
        for (const auto id : ids)
            engram_fuzz::require(id >= 0 && static_cast<std::size_t>(id) < encoder.vocab_size(), "ids are below V");
        const std::string decoded = encoder.decode(ids);
        (void)decoded;
        if (table && table->vocab_size() == encoder.vocab_size()) {
            std::vector<engram::token_id> canonical(ids.size());
            table->map(ids, canonical);
        }
    });
    return 0;
}
