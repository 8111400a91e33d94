#include "runtime/io/yaml_limits.h"

#include <sstream>
#include <string>
#include <vector>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lattice {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t'; }

// A config is one document; a few more are reported by the loader ("holds 2 YAML documents").
// Past this many, the count itself is the error.
constexpr int kMaxYamlDocuments = 16;

// Records where each document starts and drops every other event.
class DocumentStarts final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  std::vector<YAML::Mark> marks;
};

// yaml-cpp's LoadAll calls HandleNextDocument until it returns false, and on some invalid text
// (found by config_fuzz: `"",`, `&a ,`, a ',' after a root node) every call returns one more
// empty document without consuming anything, so LoadAll never returns. The same loop here
// stops when a document starts where the previous one did, or after kMaxYamlDocuments.
absl::Status CheckDocumentsProgress(absl::string_view text) {
  std::istringstream in{std::string(text)};
  DocumentStarts events;
  try {
    YAML::Parser parser(in);
    while (parser.HandleNextDocument(events)) {
      const size_t n = events.marks.size();
      if (n >= 2 && events.marks[n - 1].pos == events.marks[n - 2].pos) {
        const YAML::Mark& m = events.marks[n - 1];
        return absl::InvalidArgumentError(absl::StrCat(
            "invalid YAML at line ", m.line + 1, ", column ", m.column + 1,
            " (yaml-cpp makes no progress there; a stray ',' or text after a complete value?)"));
      }
      if (static_cast<int>(n) > kMaxYamlDocuments) {
        return absl::InvalidArgumentError(absl::StrCat(
            "YAML text holds more than ", kMaxYamlDocuments, " documents (a config is one)"));
      }
    }
  } catch (const YAML::Exception&) {
    // Syntax errors are the loader's to report, with yaml-cpp's own message and position.
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckYamlLimits(absl::string_view text, size_t max_bytes, int max_depth) {
  if (text.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("YAML text of ", text.size(),
                                                   " bytes is larger than the ", max_bytes,
                                                   " bytes lattice accepts"));
  }
  // YAML text is printable (c-printable: tab, LF, CR and no other control character, not
  // even quoted). yaml-cpp reads NUL patterns as a UTF-16/32 byte order, which turned
  // "\0\0\0," into a "," it then looped on forever.
  for (size_t i = 0, line = 1, column = 1; i < text.size(); ++i, ++column) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      ++line;
      column = 0;
    } else if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "YAML text holds the control byte 0x%02x at line %d, column %d (configs are UTF-8 "
          "text)", c, line, column));
    }
  }
  std::vector<size_t> indents;  // indentation of the open block collections
  int flow_depth = 0;           // [ and { open at this point
  int flow_base = 0;            // block depth where the open flow collection started
  char quote = 0;               // the quote of an open quoted scalar, 0 outside
  bool block_scalar = false;    // inside the body of a | or > scalar
  size_t block_scalar_indent = 0;
  int line_no = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == absl::string_view::npos) end = text.size();
    const absl::string_view line = text.substr(pos, end - pos);
    ++line_no;
    pos = end + 1;

    size_t indent = 0;
    while (indent < line.size() && line[indent] == ' ') ++indent;
    const bool blank = indent == line.size() || line[indent] == '#' ||
                       (line[indent] == '\r' && indent + 1 == line.size());
    if (block_scalar) {
      // The body of a block scalar is text, however it is indented.
      if (blank || indent > block_scalar_indent) continue;
      block_scalar = false;
    }
    if (blank && quote == 0) continue;

    int depth;
    size_t i = 0;
    if (flow_depth == 0 && quote == 0) {
      while (!indents.empty() && indents.back() > indent) indents.pop_back();
      if (indents.empty() || indents.back() < indent) indents.push_back(indent);
      depth = static_cast<int>(indents.size());
      i = indent;
      // "- - - x" and "? ": every indicator opens one more collection on the same line.
      while (i < line.size() && (line[i] == '-' || line[i] == '?') &&
             (i + 1 == line.size() || IsBlank(line[i + 1]))) {
        ++depth;
        ++i;
        while (i < line.size() && IsBlank(line[i])) ++i;
      }
      flow_base = depth;
    } else {
      depth = flow_base + flow_depth;
    }
    if (depth > max_depth) {
      return absl::InvalidArgumentError(absl::StrCat("YAML nested deeper than ", max_depth,
                                                     " levels at line ", line_no, ", column ",
                                                     i + 1));
    }

    char last = 0;  // the last character outside quotes and blanks, for block scalar headers
    // Whether the next token starts a block value: after the indentation and indicators, after
    // "key: ", and after a tag, an anchor, an alias, a quoted scalar or a flow collection.
    bool value_start = flow_depth == 0 && quote == 0;
    for (; i < line.size(); ++i) {
      const char c = line[i];
      if (quote != 0) {
        if (quote == '"' && c == '\\') {
          ++i;
        } else if (c == quote) {
          quote = 0;
          value_start = flow_depth == 0;
        }
        continue;
      }
      if (value_start && !IsBlank(c) && c != '\r') {
        value_start = false;
        // No YAML value starts with ',' (an indicator), and yaml-cpp 0.7's LoadAll never
        // returns on one where the document's node begins or ends ("," alone, "- 1\n,",
        // "&a ,"): refuse it here, while it is still text.
        if (c == ',') {
          return absl::InvalidArgumentError(absl::StrCat(
              "YAML value starting with ',' at line ", line_no, ", column ", i + 1,
              " (a ',' separates entries only inside [ ] or { })"));
        }
        if (c == '!' || c == '&' || c == '*') {
          // A tag, anchor or alias: what follows it is again where a value starts.
          while (i + 1 < line.size() && !IsBlank(line[i + 1]) && line[i + 1] != ',' &&
                 line[i + 1] != '[' && line[i + 1] != ']' && line[i + 1] != '{' &&
                 line[i + 1] != '}') {
            ++i;
          }
          value_start = true;
          last = line[i];
          continue;
        }
      }
      const bool token_start = i == 0 || IsBlank(line[i - 1]) ||
                               (flow_depth > 0 && (line[i - 1] == '[' || line[i - 1] == '{' ||
                                                   line[i - 1] == ','));
      if (c == '#' && (i == 0 || IsBlank(line[i - 1]))) break;  // a comment
      if ((c == '"' || c == '\'') && token_start) {
        quote = c;
        continue;
      }
      // In block context a bracket opens a flow collection only where a value starts; inside
      // one every bracket does. Counting a bracket inside a plain scalar only overestimates.
      if ((c == '[' || c == '{') && (flow_depth > 0 || token_start)) {
        ++flow_depth;
        if (flow_base + flow_depth > max_depth) {
          return absl::InvalidArgumentError(absl::StrCat("YAML nested deeper than ", max_depth,
                                                         " levels at line ", line_no,
                                                         ", column ", i + 1));
        }
      } else if ((c == ']' || c == '}') && flow_depth > 0) {
        --flow_depth;
        value_start = flow_depth == 0;
      }
      if (!IsBlank(c) && c != '\r') last = c;
      if (c == ':' && flow_depth == 0 && (i + 1 == line.size() || IsBlank(line[i + 1]))) {
        value_start = true;
      }
    }
    // "key: |", "key: >-", "- |2": the lines after belong to the scalar.
    if (flow_depth == 0 && quote == 0) {
      size_t j = line.size();
      while (j > 0 && (IsBlank(line[j - 1]) || line[j - 1] == '\r')) --j;
      while (j > 0 && (line[j - 1] == '+' || line[j - 1] == '-' ||
                       (line[j - 1] >= '0' && line[j - 1] <= '9'))) {
        --j;
      }
      if (j > 0 && (line[j - 1] == '|' || line[j - 1] == '>') &&
          (j == 1 || IsBlank(line[j - 2])) && (last == '|' || last == '>' || last == '+' ||
                                                last == '-' || (last >= '0' && last <= '9'))) {
        block_scalar = true;
        block_scalar_indent = indent;
      }
    }
  }
  return CheckDocumentsProgress(text);
}

}  // namespace lattice
