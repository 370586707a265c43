// engram compress-vocab: the canonical table of a Hugging Face tokenizer.json.
#include "cli.hpp"

#include <engram/io/vocab_io.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <iostream>

namespace engram_cli {

namespace {

int cmd_compress_vocab(const std::vector<std::string>& argv) {
    constexpr const char* usage = "engram compress-vocab TOKENIZER_JSON -o OUT.safetensors";
    const auto a = args::parse(argv);
    if (a.help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "Builds the canonical vocabulary (spec section 1) of a Hugging Face tokenizer.json and\n"
                  << "writes tensor 'lookup' (I64 [V]) with metadata 'canonical_vocab_size' and 'vocab_size'.\n"
                  << "The text of each id is what the tokenizers library decodes it to: models BPE (byte-level\n"
                  << "or SentencePiece style with byte fallback), Unigram, WordPiece, WordLevel; decoders\n"
                  << "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, WordPiece, BPEDecoder, CTC and\n"
                  << "Sequences of them (docs/tokenizers.md).\n";
        return 0;
    }
    a.expect(1, true, usage);
    engram::tokenizer::table_source about;
    const auto table = engram::canonical_table_from_tokenizer_json(a.positional[0], &about);
    engram::save_canonical_table(table, *a.output);
    std::cout << "vocabulary " << table.vocab_size() << " -> " << table.canonical_size() << " canonical ids ("
              << 100.0 * (1.0 - static_cast<double>(table.canonical_size()) / static_cast<double>(table.vocab_size()))
              << "% fewer; model " << about.model << ", decoder " << about.decoder << "); wrote " << *a.output << '\n';
    return 0;
}

const registration reg_cmd_compress_vocab{
    {"compress-vocab", "compress-vocab TOKENIZER_JSON -o OUT.safetensors   canonical vocabulary of a tokenizer.json",
     &cmd_compress_vocab}};

} // namespace

} // namespace engram_cli
