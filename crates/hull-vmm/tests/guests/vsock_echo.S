# A tiny 32-bit guest (PVH entry) that drives the first virtio-mmio device, a
# virtio-vsock device, as a driver would: it sets up its three queues, gives the
# device four 4 KiB receive buffers, connects from port 1234 to host port 5000,
# prints R when the RESPONSE arrives, sends "hi", prints the payload of the first
# RW packet it receives, and pulls the i8042 reset line. It polls the used rings, so
# it needs no interrupts.
.set REQ, 0x240000              # the REQUEST header
.set RW, 0x241000               # the RW header, then its payload
.include "vsock_setup.inc"
  # tx: REQUEST from (3, 1234) to (2, 5000)
  movl $3, REQ                  # src_cid
  movl $0, REQ+4
  movl $2, REQ+8                # dst_cid
  movl $0, REQ+12
  movl $1234, REQ+16            # src_port
  movl $5000, REQ+20            # dst_port
  movl $0, REQ+24               # len
  movl $0x00010001, REQ+28      # type STREAM, op REQUEST
  movl $0, REQ+32               # flags
  movl $65536, REQ+36           # buf_alloc
  movl $0, REQ+40               # fwd_cnt
  movl $REQ, TX_DESC
  movl $0, TX_DESC+4
  movl $44, TX_DESC+8
  movl $0, TX_DESC+12
  movw $0, TX_AVAIL+4
  movw $1, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify tx
  xor %edi, %edi                # rx used entries consumed
  mov $0x3f8, %dx
wait_response:
  call next_rx                  # ebx = the packet
  cmpw $2, 30(%ebx)             # op RESPONSE
  jne wait_response
  mov $'R', %al
  out %al, %dx
  # tx: RW "hi"
  movl $3, RW
  movl $0, RW+4
  movl $2, RW+8
  movl $0, RW+12
  movl $1234, RW+16
  movl $5000, RW+20
  movl $2, RW+24                # len
  movl $0x00050001, RW+28       # type STREAM, op RW
  movl $0, RW+32
  movl $65536, RW+36
  movl $0, RW+40
  movw $0x6968, RW+44           # "hi"
  movl $RW, TX_DESC+16
  movl $0, TX_DESC+20
  movl $46, TX_DESC+24
  movl $0, TX_DESC+28
  movw $1, TX_AVAIL+6
  movw $2, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify tx
wait_data:
  call next_rx
  cmpw $5, 30(%ebx)             # op RW
  jne wait_data
  mov 24(%ebx), %ecx            # len
  lea 44(%ebx), %esi
2:
  movb (%esi), %al
  out %al, %dx
  inc %esi
  dec %ecx
  jnz 2b
  mov $0xfe, %al
  out %al, $0x64                # reset
  hlt
