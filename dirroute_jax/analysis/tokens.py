"""Token classes shared by the analyses: what counts as a "function token" (the paper says
late-layer directions read out to function words and punctuation), and how a token is shown."""

import string

STOP_WORDS = frozenset(
  """
a an the and or but if of to in on at by for with from as into about than then so not no is
are was were be been being am do does did have has had it its this that these those there here
he she they we you i me him her them us my your his their our who which what when where how
will would can could should may might must shall all any some
""".split()
)


def is_function_token(text: str) -> bool:
  """Whitespace-only, punctuation-only, or a stop word (case-insensitive, spaces stripped)."""
  stripped = text.strip()
  return (
    not stripped
    or all(ch in string.punctuation for ch in stripped)
    or stripped.lower() in STOP_WORDS
  )


def show_bytes(raw: bytes) -> str:
  """`raw` as text, each byte that is not part of a complete UTF-8 character written as
  `<0xE2>`: a byte-level token can hold part of a character ('—' is 3 bytes, often 2 tokens)."""
  out = []
  while raw:
    try:
      out.append(raw.decode("utf-8"))
      break
    except UnicodeDecodeError as e:
      out.append(raw[: e.start].decode("utf-8"))
      out += [f"<0x{b:02X}>" for b in raw[e.start : e.end]]
      raw = raw[e.end :]
  return "".join(out)


def token_label(tokenizer, token_id: int) -> str:
  """One token as readable text for readouts and reports: its decoded string, with the bytes
  of an incomplete character as `<0xE2>` instead of the U+FFFD that decoding it alone gives."""
  return show_bytes(tokenizer.token_bytes(int(token_id)))
