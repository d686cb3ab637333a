# A tiny 32-bit guest (PVH entry) that serves one vsock connection from the host, as
# hull's agent does: it sets up the three queues and four 4 KiB receive buffers, waits
# for a REQUEST (a host process wrote CONNECT <port> to the hybrid socket), answers
# RESPONSE and prints A, then echoes the payload of the first RW packet back to the
# host and to COM1, waits until the device has taken it, and pulls the reset line.
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
.set RESP, 0x240000             # the RESPONSE header
.set ECHO, 0x241000             # the echoing RW header, then its payload
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
  xor %edi, %edi                # rx used entries consumed
  mov $0x3f8, %dx
wait_request:
  call next_rx                  # ebx = the packet
  cmpw $1, 30(%ebx)             # op REQUEST
  jne wait_request
  movl $3, RESP                 # src_cid: us
  movl $0, RESP+4
  movl $2, RESP+8               # dst_cid: the host
  movl $0, RESP+12
  mov 20(%ebx), %eax            # the port the host asked for is our source port
  mov %eax, RESP+16
  mov 16(%ebx), %eax            # the host's port is our destination
  mov %eax, RESP+20
  movl $0, RESP+24              # len
  movl $0x00020001, RESP+28     # type STREAM, op RESPONSE
  movl $0, RESP+32
  movl $65536, RESP+36          # buf_alloc
  movl $0, RESP+40              # fwd_cnt
  movl $RESP, TX_DESC
  movl $0, TX_DESC+4
  movl $44, TX_DESC+8
  movl $0, TX_DESC+12
  movw $0, TX_AVAIL+4
  movw $1, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify tx
  mov $'A', %al
  out %al, %dx
wait_data:
  call next_rx
  cmpw $5, 30(%ebx)             # op RW
  jne wait_data
  mov 24(%ebx), %ecx            # len
  and $63, %ecx                 # at most 63 bytes echoed
  mov RESP+16, %eax
  mov %eax, ECHO+16
  mov RESP+20, %eax
  mov %eax, ECHO+20
  movl $3, ECHO
  movl $0, ECHO+4
  movl $2, ECHO+8
  movl $0, ECHO+12
  mov %ecx, ECHO+24             # len
  movl $0x00050001, ECHO+28     # type STREAM, op RW
  movl $0, ECHO+32
  movl $65536, ECHO+36
  mov %ecx, ECHO+40             # fwd_cnt: what we consumed
  lea 44(%ebx), %esi
  mov $ECHO+44, %ebp
  mov %ecx, %eax
  add $44, %eax
  mov %eax, TX_DESC+24          # descriptor 1: header and payload
  movl $ECHO, TX_DESC+16
  movl $0, TX_DESC+20
  movl $0, TX_DESC+28
1:
  movb (%esi), %al
  movb %al, (%ebp)
  out %al, %dx
  inc %esi
  inc %ebp
  dec %ecx
  jnz 1b
  movw $1, TX_AVAIL+6
  movw $2, TX_AVAIL+2
  movl $1, MMIO+0x50            # notify tx
wait_sent:
  cmpw $2, TX_USED+2            # the device has taken both packets
  jne wait_sent
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
