# A tiny 32-bit guest (PVH entry) that drives the first virtio-mmio device, a
# virtio-console, as Linux's hvc driver would: it sets up receiveq0 and transmitq0,
# gives the device one 64-byte receive buffer, prints what the host sends into it to
# COM1, answers "hello" on transmitq0, waits until the device has taken it, and pulls
# the i8042 reset line.
.code32
.include "virtio.inc"
.set RX_BUF, 0x230000
.set TX_BUF, 0x240000
start:
  handshake
  queue 0, RX_DESC, RX_AVAIL, RX_USED            # queue 0: receiveq0
  queue 1, TX_DESC, TX_AVAIL, TX_USED            # queue 1: transmitq0
  movl $0xf, MMIO+0x70          # DRIVER_OK
  movl $RX_BUF, RX_DESC         # one writable 64-byte buffer
  movl $0, RX_DESC+4
  movl $64, RX_DESC+8
  movl $0x00000002, RX_DESC+12  # flags WRITE
  movw $0, RX_AVAIL+4
  movw $1, RX_AVAIL+2
  movl $0, MMIO+0x50            # notify receiveq0
1:
  cmpw $1, RX_USED+2            # the host's bytes have arrived
  jne 1b
  mov RX_USED+8, %ecx           # used[0].len
  and $63, %ecx
  jz 3f
  mov $RX_BUF, %esi
  mov $0x3f8, %dx
2:
  movb (%esi), %al
  out %al, %dx
  inc %esi
  dec %ecx
  jnz 2b
3:
  movl $0x6c6c6568, TX_BUF      # "hell"
  movb $'o', TX_BUF+4
  movl $TX_BUF, TX_DESC
  movl $0, TX_DESC+4
  movl $5, TX_DESC+8
  movl $0, TX_DESC+12
  movw $0, TX_AVAIL+4
  movw $1, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify transmitq0
4:
  cmpw $1, TX_USED+2            # the device has sent it
  jne 4b
  mov $0xfe, %al
  out %al, $0x64                # reset
  hlt
