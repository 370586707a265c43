#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// The canonical-id table of spec section 1 for one tokenizer.json, computed with the Hugging Face
// tokenizers library itself (its Node binding, npm @anush008/tokenizers): the library's own
// decoder for the text of every id, and its own Unicode normalizers for the keys. The tests
// compare engram's table with this one, id for id.
//
// Usage: node scripts/canonical-reference.js TOKENIZER_JSON OUT_TXT [BINDING_DIR]
//   BINDING_DIR: a directory whose node_modules holds @anush008/tokenizers (default: this one's).
// OUT_TXT gets one canonical id per line (line i = token id i), written to a temporary file and
// renamed into place, so an interrupted run leaves no table that looks complete.
'use strict';

const fs = require('fs');
const path = require('path');

if (process.argv.length < 4 || process.argv.length > 5) {
    process.stderr.write('usage: node canonical-reference.js TOKENIZER_JSON OUT_TXT [BINDING_DIR]\n');
    process.exit(2);
}
const [input, output, bindingDir] = process.argv.slice(2);
const tk = require(require.resolve('@anush008/tokenizers', {paths: [bindingDir || __dirname]}));

const tokenizer = tk.Tokenizer.fromFile(input);

// V: the largest id the library gives a token (of the model's vocabulary or an added token),
// plus one. Ids below it that name no token are holes; the library decodes them to "".
let vocabSize = 0;
for (const id of Object.values(tokenizer.getVocab(true))) vocabSize = Math.max(vocabSize, id + 1);

// Step 3's normalisation: NFKC, NFD, combining marks removed, lowercase (the library's), then
// [ \t\r\n]+ folded into one space, then strip (White_Space) unless the result is one space.
const unicode = tk.sequenceNormalizer([tk.nfkcNormalizer(), tk.nfdNormalizer(), tk.stripAccentsNormalizer(),
                                       tk.lowercase()]);
const strip = tk.stripNormalizer(true, true);

function key(id, text) {
    // The raw token and the normalised text share one key space, as in the reference.
    if (text.includes('\uFFFD')) return tokenizer.idToToken(id);
    let norm = unicode.normalizeString(text).replace(/[ \t\r\n]+/g, ' ');
    if (norm !== ' ') norm = strip.normalizeString(norm);
    return norm === '' ? text : norm;
}

async function main() {
    const ids = new Array(vocabSize);
    const canonical = new Map();
    const chunk = 4096;
    for (let first = 0; first < vocabSize; first += chunk) {
        const batch = [];
        for (let t = first; t < Math.min(vocabSize, first + chunk); ++t) batch.push([t]);
        const texts = await tokenizer.decodeBatch(batch, false);
        for (let i = 0; i < texts.length; ++i) {
            const k = key(first + i, texts[i]);
            if (!canonical.has(k)) canonical.set(k, canonical.size);
            ids[first + i] = canonical.get(k);
        }
    }
    const temporary = path.join(path.dirname(output), '.' + path.basename(output) + '.' + process.pid + '.tmp');
    fs.writeFileSync(temporary, ids.join('\n') + '\n');
    fs.renameSync(temporary, output);
    process.stdout.write(`${input}: ${vocabSize} ids -> ${canonical.size} canonical ids\n`);
}

main().catch((e) => {
    process.stderr.write(`canonical-reference: ${input}: ${e && e.message ? e.message : e}\n`);
    process.exit(1);
});
