// SPDX-License-Identifier: GPL-2.0
/*
 * gpu_p2p: peer-to-peer DMA in the L2 guest of the rig. QEMU's edu (1234:11e8, started in L0
 * with dma_mask=all ones so its DMA engine reaches any address) copies data to and from the
 * 64-bit BAR2 of an ivshmem-plain device (1af4:1110), whose bytes the CPU checks through the
 * BAR. Then the BAR is moved (memory decoding off, new address, decoding on) and the same is
 * done at the new address. Results as "P2P-RESULT key=value ..." lines in the kernel log.
 *
 * Bus addresses are guest physical addresses here (no IOMMU in the guest), so the edu is given
 * the BAR's physical address: the VMM must have mapped it for DMA in the host IOMMU, at that
 * address, and remapped it after the move.
 *
 * Module parameters: move_by=N bytes (default 512 MiB) added to the BAR's address for the move;
 * len=N bytes per transfer (default 3000, below the edu's 4096-byte buffer: see RIG.md).
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/dma-mapping.h>
#include <linux/delay.h>
#include <linux/io.h>

#define EDU_DMA_SRC	0x80
#define EDU_DMA_DST	0x88
#define EDU_DMA_CNT	0x90
#define EDU_DMA_CMD	0x98
#define EDU_DMA_START	0x1
#define EDU_DMA_TO_RAM	0x2
#define EDU_BUF		0x40000

static unsigned long move_by = 512UL << 20;
module_param(move_by, ulong, 0444);
static int len = 3000;
module_param(len, int, 0444);

static void __iomem *edu;

static int edu_wait(void)
{
	int i;

	for (i = 0; i < 100000; i++) {
		if (!(readq(edu + EDU_DMA_CMD) & EDU_DMA_START))
			return 0;
		udelay(10);
	}
	return -ETIMEDOUT;
}

/* One edu transfer of len bytes: from src into its buffer, or from its buffer to dst. */
static int edu_copy(u64 addr, bool to_buffer)
{
	writeq(to_buffer ? addr : EDU_BUF, edu + EDU_DMA_SRC);
	writeq(to_buffer ? EDU_BUF : addr, edu + EDU_DMA_DST);
	writeq(len, edu + EDU_DMA_CNT);
	writeq(EDU_DMA_START | (to_buffer ? 0 : EDU_DMA_TO_RAM), edu + EDU_DMA_CMD);
	return edu_wait();
}

/* The DMAs in both directions between RAM and the BAR at bus address bar (CPU view: io). */
static void p2p_round(const char *phase, u64 bar, void __iomem *io, u8 *buf, dma_addr_t dma,
		      u8 seed)
{
	int i, to_bad = 0, from_bad = 0, err = 0;

	/* RAM -> edu -> BAR, checked through the BAR. */
	for (i = 0; i < len; i++)
		buf[i] = (u8)(i * 13 + seed);
	memset_io(io, 0, len);
	err |= edu_copy(dma, true);
	err |= edu_copy(bar, false);
	for (i = 0; i < len && !to_bad; i++)
		if (readb(io + i) != (u8)(i * 13 + seed))
			to_bad = i + 1;
	/* BAR -> edu -> RAM, checked in RAM. */
	for (i = 0; i < len; i++)
		writeb((u8)(i * 29 + seed + 1), io + i);
	memset(buf, 0, len);
	err |= edu_copy(bar, true);
	err |= edu_copy(dma, false);
	for (i = 0; i < len && !from_bad; i++)
		if (buf[i] != (u8)(i * 29 + seed + 1))
			from_bad = i + 1;
	pr_err("P2P-RESULT phase=%s bar=%#llx to_bar=%s from_bar=%s first_bad=%d,%d err=%d\n",
	       phase, bar, to_bad ? "bad" : "ok", from_bad ? "bad" : "ok", to_bad, from_bad, err);
}

/* Moves BAR2 of pdev by move_by: decoding off, both halves written, decoding on. */
static u64 move_bar2(struct pci_dev *pdev, u64 old)
{
	u64 new = old + move_by;
	u32 lo;
	u16 cmd;

	pci_read_config_word(pdev, PCI_COMMAND, &cmd);
	pci_write_config_word(pdev, PCI_COMMAND, cmd & ~PCI_COMMAND_MEMORY);
	pci_read_config_dword(pdev, PCI_BASE_ADDRESS_2, &lo);
	pci_write_config_dword(pdev, PCI_BASE_ADDRESS_2, (u32)new | (lo & 0xf));
	pci_write_config_dword(pdev, PCI_BASE_ADDRESS_3, (u32)(new >> 32));
	pci_write_config_word(pdev, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY);
	return new;
}

static int __init p2p_init(void)
{
	struct pci_dev *e, *shm;
	void __iomem *io;
	dma_addr_t dma;
	u64 bar, size;
	u8 *buf;

	e = pci_get_device(0x1234, 0x11e8, NULL);
	shm = pci_get_device(0x1af4, 0x1110, NULL);
	if (!e || !shm) {
		pr_err("P2P-RESULT phase=find edu=%d ivshmem=%d\n", !!e, !!shm);
		goto out;
	}
	if (pci_enable_device(e) || pci_enable_device(shm)) {
		pr_err("P2P-RESULT phase=enable\n");
		goto out;
	}
	pci_set_master(e);
	if (dma_set_mask_and_coherent(&e->dev, DMA_BIT_MASK(64))) {
		pr_err("P2P-RESULT phase=mask\n");
		goto out;
	}
	edu = pci_iomap(e, 0, 0);
	bar = pci_resource_start(shm, 2);
	size = pci_resource_len(shm, 2);
	buf = dma_alloc_coherent(&e->dev, 4096, &dma, GFP_KERNEL);
	io = ioremap(bar, size);
	if (!edu || !buf || !io) {
		pr_err("P2P-RESULT phase=map\n");
		goto out;
	}
	p2p_round("first", bar, io, buf, dma, 1);
	iounmap(io);
	bar = move_bar2(shm, bar);
	io = ioremap(bar, size);
	if (io) {
		p2p_round("moved", bar, io, buf, dma, 2);
		iounmap(io);
	}
	dma_free_coherent(&e->dev, 4096, buf, dma);
	pci_iounmap(e, edu);
out:
	pci_dev_put(e);
	pci_dev_put(shm);
	/*
	 * Stays loaded, doing nothing more: an error here would make busybox insmod retry with
	 * init_module, running the test a second time.
	 */
	return 0;
}

static void __exit p2p_exit(void)
{
}

module_init(p2p_init);
module_exit(p2p_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("peer-to-peer DMA test (edu into ivshmem's BAR) for the vmm rig");
