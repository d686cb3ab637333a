# A tiny 32-bit guest (PVH entry) that drives the first virtio-mmio device, a
# virtio-blk disk, as a driver would: handshake, one queue of 4, a read of sector 1
# into 0x204000, a wait on the used ring; then it prints the status byte as a digit
# and the first 8 bytes read, and pulls the i8042 reset line.
.code32
.set MMIO, 0xd0000000
start:
  movl $0, MMIO+0x70          # Status: reset
  movl $1, MMIO+0x70
  movl $3, MMIO+0x70
  movl $1, MMIO+0x24
  movl $1, MMIO+0x20
  movl $0xb, MMIO+0x70
  movl $0, MMIO+0x30
  movl $4, MMIO+0x38
  movl $0x200000, MMIO+0x80
  movl $0x201000, MMIO+0x90
  movl $0x202000, MMIO+0xa0
  movl $1, MMIO+0x44
  movl $0xf, MMIO+0x70        # DRIVER_OK
  movl $0, 0x203000
  movl $0, 0x203004
  movl $1, 0x203008
  movl $0, 0x20300c
  movb $0xff, 0x205000
  movl $0x203000, 0x200000
  movl $0, 0x200004
  movl $16, 0x200008
  movl $0x00010001, 0x20000c
  movl $0x204000, 0x200010
  movl $0, 0x200014
  movl $512, 0x200018
  movl $0x00020003, 0x20001c
  movl $0x205000, 0x200020
  movl $0, 0x200024
  movl $1, 0x200028
  movl $0x00000002, 0x20002c
  movw $0, 0x201004
  movl $0x00010000, 0x201000
  movl $0, MMIO+0x50          # QueueNotify: queue 0
1:
  cmpw $1, 0x202002           # used.idx: the device has answered
  jne 1b
  mov $0x3f8, %dx
  movb 0x205000, %al
  add $0x30, %al
  out %al, %dx
  mov $0x204000, %esi
  mov $8, %ecx
2:
  movb (%esi), %al
  out %al, %dx
  inc %esi
  dec %ecx
  jnz 2b
  movb $0xfe, %al
  out %al, $0x64
  hlt
