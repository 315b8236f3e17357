"""The media layer's fixed numbers, importable without torch (the command's --help shows them)."""

MAX_STYLES = 8  # styles mixed into one output
DEFAULT_SIZE = 512  # the shorter side images and styles are stylized at unless asked
OWN_SIZE_LIMIT = 1080  # the shorter side a video keeps at most when the command is not asked
# Image limits: per upload, from its header; per image after resizing (8K, 7680 x 4320).
MAX_IMAGE_PIXELS = 36_000_000
MAX_OUTPUT_PIXELS = 7680 * 4320
# How a clip is encoded and checkpointed (the service's ADAIN_VIDEO_CRF, ADAIN_VIDEO_PRESET and
# ADAIN_JOB_CHECKPOINT_S default to these; the command uses them as they are).
VIDEO_CRF = 18
VIDEO_PRESET = "medium"
CHECKPOINT_S = 10.0
# A video job of at least twice this many frames is split into parts of at least this many,
# stylized by idle workers in parallel (ADAIN_JOB_SPLIT_FRAMES; 0: never split); each part
# stylizes this many frames before its first without writing them (docs/video.md).
JOB_SPLIT_FRAMES = 300
SPLIT_WARMUP_FRAMES = 8
MAX_PARTS = 8  # a longer clip has longer parts (each tracks the camera from the clip's start)
# A stabilised clip's flicker/detail trade-off (`stability`: 0 per-frame, 1 the most stable);
# models.video.DEFAULT_STRENGTH, the stabiliser's own blending (a test keeps them equal).
DEFAULT_STABILITY = 0.5
