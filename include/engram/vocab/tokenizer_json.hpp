#pragma once
// SPDX-License-Identifier: MIT
// Canonical vocabulary tables (spec section 1) from a Hugging Face tokenizer.json: the text of
// every id as the tokenizers library decodes it (any decoder of decoder.hpp; BPE, WordPiece,
// WordLevel and Unigram vocabularies), folded by the normalisation key.

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/types.hpp>
#include <engram/vocab/canonical_key.hpp>
#include <engram/vocab/canonical_table.hpp>
#include <engram/vocab/decoder.hpp>
#include <engram/vocab/json_access.hpp>
#include <engram/vocab/tokenizer_reader.hpp>
#include <engram/vocab/utf8.hpp>

#include <nlohmann/json.hpp> // for json (parsing tokenizer.json)

#include <algorithm>     // for max
#include <cstddef>       // for size_t
#include <cstdint>       // for int64_t
#include <filesystem>    // for path
#include <optional>      // for optional
#include <string>        // for string
#include <string_view>   // for string_view
#include <unordered_map> // for unordered_map (key -> canonical id)
#include <utility>       // for move
#include <vector>        // for vector

ENGRAM_BEGIN_NAMESPACE

namespace tokenizer {

/// @brief What a canonical table was built from, for reports.
struct table_source {
    std::string model;   ///< model.type: "BPE", "Unigram", "WordPiece" or "WordLevel"
    std::string decoder; ///< the decoder's steps (tokenizer::decoder::describe), or "none"
};

} // namespace tokenizer

namespace detail::tokenizer_json {

/// One validated entry of `added_tokens`: its id, its content, the entry itself (for optional
/// flags) and its name in messages (`added_tokens[i]`).
struct added_token {
    std::size_t id;
    const std::string* content;
    const json* entry;
    std::string where;
};

/// The `added_tokens` of a parsed tokenizer.json, in file order: absent or null means none;
/// each entry must be an object with an integer `id` and a string `content`.
inline std::vector<added_token> added_tokens(const json& doc, const std::string& source) {
    std::vector<added_token> out;
    const auto it = doc.find("added_tokens");
    if (it == doc.end() || it->is_null()) return out;
    if (!it->is_array())
        throw format_error(source + ": field added_tokens is " + it->type_name() + ", expected an array");
    out.reserve(it->size());
    for (std::size_t i = 0; i < it->size(); ++i) {
        const json& entry = (*it)[i];
        std::string where = "added_tokens[" + std::to_string(i) + "]";
        if (!entry.is_object())
            throw format_error(source + ": " + where + " is " + entry.type_name() + ", expected an object");
        const auto id = entry.find("id");
        if (id == entry.end()) throw format_error(source + ": missing field " + where + ".id");
        const std::size_t t = token_index(*id, where + ".id", source);
        const auto& content = field(entry, "content", json::value_t::string, where + ".content", source);
        out.push_back({t, &content.get_ref<const std::string&>(), &entry, std::move(where)});
    }
    return out;
}

/// @brief The ids the Hugging Face library gives the added tokens when it loads the file.
///
/// The library does not take an entry's `id` as given: it adds the tokens in file order, and a
/// token whose content is already known keeps that id (an earlier added token's, else the
/// model's); any other token gets the next new id, counting from the model's number of entries.
/// Tokens with empty content are ignored (nullopt). For every released tokenizer this gives the
/// file's ids; for a file where it does not, the library's ids are the ones its encoder emits.
/// @param model_id_of `std::optional<std::size_t>(std::string_view)`: the model's id of a token
/// @throws format_error if a new id would reach tokenizer::max_vocab_size
template <class ModelIdOf>
std::vector<std::optional<std::size_t>> resolve_added_ids(const std::vector<added_token>& added,
                                                          std::size_t model_entries, ModelIdOf&& model_id_of,
                                                          const std::string& source) {
    std::vector<std::optional<std::size_t>> ids(added.size());
    std::unordered_map<std::string_view, std::size_t> known;
    std::size_t next = model_entries;
    for (std::size_t i = 0; i < added.size(); ++i) {
        const std::string& content = *added[i].content;
        if (content.empty()) continue;
        if (const auto it = known.find(content); it != known.end()) {
            ids[i] = it->second;
        } else if (const std::optional<std::size_t> id = model_id_of(std::string_view(content))) {
            ids[i] = *id;
        } else {
            if (next >= tokenizer::max_vocab_size)
                throw format_error(source + ": " + added[i].where + " would get id " + std::to_string(next) +
                                   ", too large (token ids must be below " + std::to_string(tokenizer::max_vocab_size) +
                                   ")");
            ids[i] = next++;
        }
        known[content] = *ids[i];
    }
    return ids;
}

/// The vocabulary of `model`: the token of each id (nullptr for an id it does not name) and its
/// number of entries. BPE, WordPiece and WordLevel keep `{token: id}` (read into
/// `parts.vocab_entries`); Unigram a list of `[piece, score]` pairs whose ids are their positions.
class model_vocabulary {
public:
    model_vocabulary(const tokenizer_parts& parts, const json& model, const std::string& source) {
        type_ = string_field(model, "type", "model.type", source);
        if (type_ == "BPE" || type_ == "WordPiece" || type_ == "WordLevel") {
            field(model, "vocab", json::value_t::object, "model.vocab", source);
            const auto& entries = parts.vocab_entries;
            ids_.resize(entries.size());
            for (std::size_t k = 0; k < entries.size(); ++k)
                ids_[k] =
                    token_index(entries[k].second, "model.vocab[" + quote_for_message(entries[k].first) + "]", source);
            // Of repeated keys the last counts, as in the library's map.
            std::vector<bool> live(entries.size(), true);
            index_.reserve(entries.size());
            for (std::size_t k = 0; k < entries.size(); ++k) {
                const auto [it, inserted] = index_.try_emplace(entries[k].first, k);
                if (inserted) continue;
                live[it->second] = false;
                it->second = k;
            }
            entries_ = index_.size();
            // When several entries share an id, the bytewise smallest string is used (the
            // library's choice depends on its hash order).
            std::size_t size = 0;
            for (std::size_t k = 0; k < entries.size(); ++k)
                if (live[k]) size = std::max(size, ids_[k] + 1);
            token_of_.assign(size, nullptr);
            for (std::size_t k = 0; k < entries.size(); ++k) {
                if (!live[k]) continue;
                const std::string*& slot = token_of_[ids_[k]];
                if (slot == nullptr || entries[k].first < *slot) slot = &entries[k].first;
            }
        } else if (type_ == "Unigram") {
            const json& vocab = field(model, "vocab", json::value_t::array, "model.vocab", source);
            if (vocab.size() > tokenizer::max_vocab_size)
                throw format_error(source + ": model.vocab has " + std::to_string(vocab.size()) +
                                   " entries, too many (token ids must be below " +
                                   std::to_string(tokenizer::max_vocab_size) + ")");
            token_of_.resize(vocab.size());
            for (std::size_t i = 0; i < vocab.size(); ++i) {
                const json& entry = vocab[i];
                if (!entry.is_array() || entry.size() != 2 || !entry[0].is_string() || !entry[1].is_number()) {
                    std::string shown = entry.dump(-1, ' ', true); // ASCII only, so it can be cut anywhere
                    if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
                    throw format_error(source + ": model.vocab[" + std::to_string(i) + "] is " + shown +
                                       ", expected a [piece, score] pair");
                }
                token_of_[i] = &entry[0].get_ref<const std::string&>();
            }
            entries_ = vocab.size();
        } else {
            throw unsupported_error(source + ": model.type " + quote_for_message(type_) +
                                    " is not supported (supported: BPE, WordPiece, WordLevel and Unigram)");
        }
    }

    /// One past the largest id the model names.
    [[nodiscard]] std::size_t size() const noexcept { return token_of_.size(); }
    /// What the library counts as the model's vocabulary size (its entries; holes do not count).
    [[nodiscard]] std::size_t entries() const noexcept { return entries_; }
    [[nodiscard]] const std::vector<const std::string*>& tokens() const noexcept { return token_of_; }
    [[nodiscard]] const std::string& type() const noexcept { return type_; }

    /// The model's id of `token`, if it has one (of repeated Unigram pieces, the last).
    [[nodiscard]] std::optional<std::size_t> id_of(std::string_view token) {
        if (ids_.empty() && index_.empty()) // Unigram: the index is built on first use
            for (std::size_t i = 0; i < token_of_.size(); ++i) index_[*token_of_[i]] = i;
        const auto it = index_.find(token);
        if (it == index_.end()) return std::nullopt;
        return ids_.empty() ? it->second : ids_[it->second];
    }

private:
    std::vector<const std::string*> token_of_;
    std::vector<std::size_t> ids_;                            // {token: id} vocabularies: the id of each entry
    std::unordered_map<std::string_view, std::size_t> index_; // token -> entry ({token: id}) or id (Unigram)
    std::size_t entries_ = 0;
    std::string type_;
};

/// The canonical table of a parsed tokenizer.json; `source` names the input in messages.
inline canonical_table build_table(const tokenizer_parts& parts, const std::string& source,
                                   tokenizer::table_source* about, std::size_t vocab_size = 0) {
    const json& doc = parts.doc;
    if (!doc.is_object()) throw format_error(source + ": the top level is " + doc.type_name() + ", expected an object");
    const json& model = field(doc, "model", json::value_t::object, "model", source);
    model_vocabulary vocab(parts, model, source);

    // The token of every id, as the library looks it up for decode([id]): an added token's
    // content first, else the model's entry. Of two added tokens given one id, the later wins.
    const auto added = added_tokens(doc, source);
    const auto added_ids = resolve_added_ids(
        added, vocab.entries(), [&](std::string_view token) { return vocab.id_of(token); }, source);
    std::vector<const std::string*> token_of = vocab.tokens();
    for (std::size_t i = 0; i < added.size(); ++i) {
        if (!added_ids[i]) continue;
        if (*added_ids[i] >= token_of.size()) token_of.resize(*added_ids[i] + 1, nullptr);
        token_of[*added_ids[i]] = added[i].content;
    }
    if (token_of.empty()) throw format_error(source + ": model.vocab and added_tokens are both empty");
    // A model's own vocabulary size (DeepSeek-V4.1's `vocab_size`): ids past the tokenizer's
    // are holes, ids past it are dropped.
    if (vocab_size != 0) token_of.resize(vocab_size, nullptr);

    // The library reads a missing decoder like a null one: no decoder, tokens joined by spaces.
    const auto it = doc.find("decoder");
    const tokenizer::decoder decoder = tokenizer::decoder::from_json(it == doc.end() ? json(nullptr) : *it, source);
    if (about != nullptr) *about = {vocab.type(), decoder.describe()};

    // Keys, and canonical ids in order of first appearance. An id that names no token (a hole
    // below the largest id) decodes to "", as the library's decode skips unknown ids.
    std::vector<token_id> lookup(token_of.size());
    std::unordered_map<std::string, token_id> canonical_of;
    canonical_of.reserve(token_of.size());
    key_builder make_key;
    std::vector<std::string> work;
    for (std::size_t t = 0; t < token_of.size(); ++t) {
        work.clear();
        if (token_of[t] != nullptr) work.push_back(*token_of[t]);
        const std::string text = decoder.finish(work);
        std::string key = make_key(text, token_of[t] != nullptr ? std::string_view(*token_of[t]) : std::string_view());
        const auto next = static_cast<token_id>(canonical_of.size());
        lookup[t] = canonical_of.try_emplace(std::move(key), next).first->second;
    }
    return canonical_table::from_lookup(std::move(lookup));
}

inline canonical_table table_from_text(std::string_view json_text, const std::string& source,
                                       tokenizer::table_source* about, std::size_t vocab_size = 0) {
    return build_table(read_for_table(json_text, source), source, about, vocab_size);
}

} // namespace detail::tokenizer_json

/// @brief The canonical table (spec section 1) of a tokenizer given as the text of a Hugging
///        Face tokenizer.json: byte-level BPE (DeepSeek-V3, Qwen3, Llama 3, GPT-4o), SentencePiece
///        style BPE with byte fallback (Llama 2, Gemma, Mistral), Unigram, WordPiece, WordLevel.
///
/// The text of id t is what the tokenizers library's `decode([t], skip_special_tokens=False)`
/// returns: the token (an added token's content, else the model's entry) run through the
/// file's decoder (tokenizer::decoder). V is the largest id plus one; added tokens get the ids
/// the library gives them (detail::tokenizer_json::resolve_added_ids); an id that names no
/// token decodes to "".
/// @throws format_error if the text is not JSON or a field is missing or ill-typed (the message
///         names the field), or an id is negative or not below tokenizer::max_vocab_size
/// @throws unsupported_error for a model type or decoder step engram does not run (the message
///         names it)
/// @param about if given, receives the model type and the decoder's steps
inline canonical_table canonical_table_from_tokenizer_json_text(std::string_view json_text,
                                                                tokenizer::table_source* about = nullptr) {
    return detail::tokenizer_json::table_from_text(json_text, "tokenizer.json", about);
}

/// @brief canonical_table_from_tokenizer_json_text on the contents of `file`.
/// @throws io_error naming the path if the file cannot be read; otherwise as the text form,
///         with the path in the message
inline canonical_table canonical_table_from_tokenizer_json(const std::filesystem::path& file,
                                                           tokenizer::table_source* about = nullptr) {
    return detail::tokenizer_json::table_from_text(detail::tokenizer_json::read_file(file), file.string(), about);
}

/// @brief The canonical table over raw ids `[0, vocab_size)` exactly (a model's own vocabulary
///        size, as DeepSeek-V4.1's reference builds it): ids the tokenizer does not name are holes
///        (they decode to ""), ids at or past `vocab_size` are left out.
/// @throws config_error for vocab_size 0; otherwise as canonical_table_from_tokenizer_json
inline canonical_table canonical_table_from_tokenizer_json(const std::filesystem::path& file, std::size_t vocab_size,
                                                           tokenizer::table_source* about = nullptr) {
    if (vocab_size == 0) throw config_error(file.string() + ": vocab_size 0 for the canonical table");
    return detail::tokenizer_json::table_from_text(detail::tokenizer_json::read_file(file), file.string(), about,
                                                   vocab_size);
}

ENGRAM_END_NAMESPACE
