# A tiny 32-bit guest (PVH entry) that drives the first virtio-mmio device, a
# virtio-net, as Linux's driver would: it accepts VIRTIO_NET_F_MAC, reads its MAC
# address from the config space, sets up receiveq (0) and transmitq (1), and takes
# frames into one 1600-byte receive buffer until one has the ethertype 0x88b5 (the
# host's own traffic, such as IPv6 solicitations, is skipped). It sends that frame
# back to its sender, from its own MAC, waits until the device has taken it, prints
# `!` to COM1 and pulls the i8042 reset line.
.code32
.include "virtio.inc"
.set RX_BUF, 0x230000
.set TX_BUF, 0x240000
.set MYMAC, 0x250000
.set HDR, 12                    # struct virtio_net_hdr_v1
start:
  handshake 0x20                # and VIRTIO_NET_F_MAC (bit 5)
  queue 0, RX_DESC, RX_AVAIL, RX_USED            # queue 0: receiveq
  queue 1, TX_DESC, TX_AVAIL, TX_USED            # queue 1: transmitq
  movl $0xf, MMIO+0x70          # DRIVER_OK
  mov MMIO+0x100, %eax          # config: mac[0..4]
  mov %eax, MYMAC
  movw MMIO+0x104, %ax          # mac[4..6]: the config space is 6 bytes
  movw %ax, MYMAC+4
  movl $RX_BUF, RX_DESC         # descriptor 0: one writable buffer, reused
  movl $0, RX_DESC+4
  movl $1600, RX_DESC+8
  movl $0x00000002, RX_DESC+12  # flags WRITE
  xor %ebx, %ebx                # receive buffers posted
post:
  mov %ebx, %eax
  and $3, %eax
  movw $0, RX_AVAIL+4(,%eax,2)  # avail.ring[idx % 4] = descriptor 0
  inc %ebx
  movw %bx, RX_AVAIL+2          # avail.idx
  movl $0, MMIO+0x50            # notify receiveq
1:
  cmpw %bx, RX_USED+2           # the device used it
  jne 1b
  cmpw $0xb588, RX_BUF+HDR+12   # ethertype 0x88b5, big-endian on the wire
  jne post
  lea -1(%ebx), %eax
  and $3, %eax
  mov RX_USED+8(,%eax,8), %ecx  # used.ring[idx % 4].len: header and frame
  mov %ecx, %edx
  mov $RX_BUF, %esi
  mov $TX_BUF, %edi
2:
  movb (%esi), %al
  movb %al, (%edi)
  inc %esi
  inc %edi
  dec %ecx
  jnz 2b
  movw $0, TX_BUF+10            # num_buffers: 0 in a transmit header
  mov RX_BUF+HDR+6, %eax        # destination: the frame's source
  mov %eax, TX_BUF+HDR
  movw RX_BUF+HDR+10, %ax
  movw %ax, TX_BUF+HDR+4
  mov MYMAC, %eax               # source: our MAC
  mov %eax, TX_BUF+HDR+6
  movw MYMAC+4, %ax
  movw %ax, TX_BUF+HDR+10
  movl $TX_BUF, TX_DESC
  movl $0, TX_DESC+4
  mov %edx, TX_DESC+8
  movl $0, TX_DESC+12
  movw $0, TX_AVAIL+4
  movw $1, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify transmitq
3:
  cmpw $1, TX_USED+2            # the device has sent it
  jne 3b
  mov $'!', %al
  mov $0x3f8, %dx
  out %al, %dx
  mov $0xfe, %al
  out %al, $0x64                # reset
  hlt
