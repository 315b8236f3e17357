"""The media layer's fixed numbers, importable without torch (the command's --help shows them)."""

MAX_STYLES = 8  # styles mixed into one output
DEFAULT_SIZE = 512  # the shorter side images and styles are stylized at unless asked
OWN_SIZE_LIMIT = 1080  # the shorter side a video keeps at most when the command is not asked
