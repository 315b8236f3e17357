"""The HTTP service (`service.main:create_app`, `adain serve`)."""

import media  # noqa: F401 (sets OMP_WAIT_POLICY before torch loads)
