"""Images: debootstrap base images (lab devices, runtime) and the multi-arch runtime image."""
