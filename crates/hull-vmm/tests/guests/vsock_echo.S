# A tiny 32-bit guest (PVH entry) that drives the first virtio-mmio device, a
# virtio-vsock device, as a driver would: it sets up its three queues, gives the
# device four 4 KiB receive buffers, connects from port 1234 to host port 5000,
# prints R when the RESPONSE arrives, sends "hi", prints the payload of the first
# RW packet it receives, and pulls the i8042 reset line. It polls the used rings, so
# it needs no interrupts.
.code32
.set MMIO, 0xd0000000
.set RX_DESC, 0x200000
.set RX_AVAIL, 0x201000
.set RX_USED, 0x202000
.set TX_DESC, 0x210000
.set TX_AVAIL, 0x211000
.set TX_USED, 0x212000
.set EV_DESC, 0x220000
.set EV_AVAIL, 0x221000
.set EV_USED, 0x222000
.set RX_BUFS, 0x230000          # four 4 KiB buffers
.set REQ, 0x240000              # the REQUEST header
.set RW, 0x241000               # the RW header, then its payload
start:
  mov $0x8ff0, %esp             # PVH gives no stack; below the zero page
  movl $0, MMIO+0x70            # Status: reset
  movl $1, MMIO+0x70            # ACKNOWLEDGE
  movl $3, MMIO+0x70            # DRIVER
  movl $1, MMIO+0x24            # DriverFeaturesSel 1
  movl $1, MMIO+0x20            # VIRTIO_F_VERSION_1
  movl $0xb, MMIO+0x70          # FEATURES_OK
  # queue 0 (rx), 1 (tx), 2 (event): 4 entries each
  movl $0, MMIO+0x30
  movl $4, MMIO+0x38
  movl $RX_DESC, MMIO+0x80
  movl $RX_AVAIL, MMIO+0x90
  movl $RX_USED, MMIO+0xa0
  movl $1, MMIO+0x44
  movl $1, MMIO+0x30
  movl $4, MMIO+0x38
  movl $TX_DESC, MMIO+0x80
  movl $TX_AVAIL, MMIO+0x90
  movl $TX_USED, MMIO+0xa0
  movl $1, MMIO+0x44
  movl $2, MMIO+0x30
  movl $4, MMIO+0x38
  movl $EV_DESC, MMIO+0x80
  movl $EV_AVAIL, MMIO+0x90
  movl $EV_USED, MMIO+0xa0
  movl $1, MMIO+0x44
  movl $0xf, MMIO+0x70          # DRIVER_OK
  # rx: descriptors 0-3, one writable 4 KiB buffer each, all made available
  xor %ecx, %ecx
1:
  mov %ecx, %eax
  shl $12, %eax
  add $RX_BUFS, %eax
  mov %ecx, %edx
  shl $4, %edx
  mov %eax, RX_DESC(%edx)       # addr
  movl $0, RX_DESC+4(%edx)
  movl $4096, RX_DESC+8(%edx)   # len
  movl $0x00000002, RX_DESC+12(%edx)  # flags WRITE, next 0
  movw %cx, RX_AVAIL+4(,%ecx,2) # ring[i] = i
  inc %ecx
  cmp $4, %ecx
  jne 1b
  movw $4, RX_AVAIL+2           # avail.idx
  movl $0, MMIO+0x50            # notify rx
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

# Waits for the next used rx entry; returns its buffer in ebx.
next_rx:
  movzwl RX_USED+2, %eax
  cmp %eax, %edi
  je next_rx
  mov RX_USED+4(,%edi,8), %ebx  # used id
  inc %edi
  shl $12, %ebx
  add $RX_BUFS, %ebx
  ret
