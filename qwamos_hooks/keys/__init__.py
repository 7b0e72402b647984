"""Per-VM keys sealed to the TPM: enrolment, unseal-at-launch, delivery, wipe,
rotation and recovery. Import submodules directly; this package imports nothing
so a VM without keys pays nothing for it."""
