# A tiny 32-bit guest (PVH entry) that drives the first virtio-mmio device, a
# virtio-balloon with free page reporting, as Linux's page reporting does: it fills
# 64 KiB at 0x300000 and the page after it with 0xaa, reports the 64 KiB as free on
# the reporting queue (queue 2, after inflate and deflate), waits for the used ring,
# and prints Z if the reported range reads back as zero (the host dropped it) and K if
# the page after it kept its bytes; then it pulls the i8042 reset line.
.code32
.include "virtio.inc"
.set RP_DESC, 0x220000
.set RP_AVAIL, 0x221000
.set RP_USED, 0x222000
.set FREED, 0x300000
start:
  handshake 0x20                # VIRTIO_BALLOON_F_REPORTING
  queue 0, RX_DESC, RX_AVAIL, RX_USED
  queue 1, TX_DESC, TX_AVAIL, TX_USED
  queue 2, RP_DESC, RP_AVAIL, RP_USED
  movl $0xf, MMIO+0x70          # DRIVER_OK
  cld
  mov $FREED, %edi
  mov $0xaaaaaaaa, %eax
  mov $((0x10000 + 0x1000) / 4), %ecx
  rep stosl
  movl $FREED, RP_DESC          # descriptor 0: the free range, device-writable
  movl $0, RP_DESC+4
  movl $0x10000, RP_DESC+8
  movl $0x00000002, RP_DESC+12  # flags VRING_DESC_F_WRITE, next 0
  movw $0, RP_AVAIL+4           # ring[0] = descriptor 0
  movl $0x00010000, RP_AVAIL    # flags 0, idx 1
  movl $2, MMIO+0x50            # QueueNotify: queue 2
1:
  cmpw $1, RP_USED+2            # used.idx: the device has answered
  jne 1b
  mov $0x3f8, %dx
  mov $FREED, %esi
  mov $(0x10000 / 4), %ecx
  xor %eax, %eax
2:
  or (%esi), %eax
  add $4, %esi
  dec %ecx
  jnz 2b
  test %eax, %eax
  jnz 3f
  movb $'Z', %al
  out %al, %dx
3:
  cmpl $0xaaaaaaaa, FREED+0x10000
  jne 4f
  movb $'K', %al
  out %al, %dx
4:
  movb $0xfe, %al
  out %al, $0x64
  hlt
